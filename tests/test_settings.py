"""Settings precedence and validation, on real YAML files."""

from pathlib import Path

import pytest
import yaml

from uba.errors import UserError
from uba.settings import Settings, load_settings

REPO = Path(__file__).resolve().parents[1]


def test_default_yaml_matches_model_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    from_file = load_settings(env={})
    assert from_file.model_dump() == Settings().model_dump()


def test_default_yaml_lists_every_setting() -> None:
    data = yaml.safe_load((REPO / "configs" / "default.yaml").read_text())
    expected = Settings().model_dump(mode="json")
    assert set(data) == set(expected)
    for section, values in expected.items():
        assert set(data[section]) == set(values), section


def test_precedence_flag_over_env_over_file(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("paths: {data_dir: from-file}\nmodel: {n_estimators: 50}\n")
    env = {"UBA_DATA_DIR": "from-env", "UBA_MODEL__N_ESTIMATORS": "70"}
    assert load_settings(config, env={}).paths.data_dir == Path("from-file")
    assert load_settings(config, env=env).paths.data_dir == Path("from-env")
    assert load_settings(config, env=env).model.n_estimators == 70
    flagged = load_settings(config, overrides={"paths": {"data_dir": "from-flag"}}, env=env)
    assert flagged.paths.data_dir == Path("from-flag")


def test_unset_flag_does_not_hide_lower_layer(tmp_path: Path) -> None:
    settings = load_settings(overrides={"paths": {"data_dir": None}}, env={"UBA_DATA_DIR": "e"})
    assert settings.paths.data_dir == Path("e")


def test_uba_config_env_names_the_file(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("threshold: {percentile: 99.5}\n")
    assert load_settings(env={"UBA_CONFIG": str(config)}).threshold.percentile == 99.5


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("model: {n_trees: 3}\n", "unknown setting 'model.n_trees'"),
        ("colour: red\n", "unknown setting 'colour'"),
        ("threshold: {percentile: 120}\n", "invalid setting 'threshold.percentile' = 120"),
        ("model: {contamination: lots}\n", "invalid setting 'model.contamination' = 'lots'"),
        ("events: {event_types: []}\n", "invalid setting 'events.event_types'"),
        ("- just\n- a list\n", "must hold a mapping"),
        ("model: {n_estimators: [1\n", "not valid YAML"),
    ],
)
def test_bad_config_is_a_clear_error(tmp_path: Path, text: str, message: str) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text(text)
    with pytest.raises(UserError, match=message.replace("[", r"\[").replace("(", r"\(")):
        load_settings(config, env={})


def test_missing_config_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="cannot read config file"):
        load_settings(tmp_path / "nope.yaml", env={})


def test_bad_env_value_names_the_setting() -> None:
    with pytest.raises(UserError, match="invalid setting 'ray.num_workers' = 0"):
        load_settings(env={"UBA_RAY__NUM_WORKERS": "0"})
