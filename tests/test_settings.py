"""Settings precedence and validation, on real YAML files."""

import os
import re
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from jobs.cli import cli
from uba.errors import UserError
from uba.settings import MAX_CONFIG_BYTES, MIN_RELOAD_INTERVAL_SEC, Settings, load_settings

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


# --- hostile config files (hardening) ----------------------------------------

# "Billion laughs" under a real setting: the old loader expanded it when the error
# message printed the value (repr of 9**9 strings: 2.5 GB and no end).
ALIAS_BOMB = "threshold:\n  percentile:\n" + "".join(
    f"    - &{name} [{', '.join([f'*{prev}'] * 9) if prev else ', '.join(['lol'] * 9)}]\n"
    for prev, name in zip(["", *"abcdefgh"], "abcdefghi", strict=True)
)


@pytest.mark.timeout(20)
def test_yaml_alias_bomb_is_refused_at_once(tmp_path: Path) -> None:
    config = tmp_path / "bomb.yaml"
    config.write_text(ALIAS_BOMB)
    with pytest.raises(UserError, match=r"YAML aliases \(\*name\) are not allowed in settings, at line 4"):
        load_settings(config, env={})


@pytest.mark.timeout(20)
def test_alias_in_an_environment_value_is_not_expanded() -> None:
    """An env value that is not plain YAML stays the raw string, which then fails validation."""
    with pytest.raises(UserError, match="invalid setting 'model.n_estimators'"):
        load_settings(env={"UBA_MODEL__N_ESTIMATORS": "&a [1, *a]"})


def test_plain_anchors_without_aliases_still_load(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("model: &m {n_estimators: 50}\n")
    assert load_settings(config, env={}).model.n_estimators == 50


@pytest.mark.parametrize("value", ["1e-9", "0.000000001", "0.1"])
def test_reload_interval_below_the_minimum_is_refused(value: str) -> None:
    with pytest.raises(UserError, match=r"invalid setting 'api.reload_interval_sec'.*must be 0 \(off\) or at least"):
        load_settings(env={"UBA_API__RELOAD_INTERVAL_SEC": value})


@pytest.mark.parametrize("value", ["0", str(MIN_RELOAD_INTERVAL_SEC), "300"])
def test_reload_interval_off_or_sane_is_accepted(value: str) -> None:
    assert load_settings(env={"UBA_API__RELOAD_INTERVAL_SEC": value}).api.reload_interval_sec == float(value)


@pytest.mark.timeout(20)
def test_a_fifo_or_device_as_config_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "config.yaml"
    os.mkfifo(fifo)
    with pytest.raises(UserError, match="not a regular file"):
        load_settings(fifo, env={})
    with pytest.raises(UserError, match="not a regular file"):
        load_settings("/dev/zero", env={})


def test_oversized_or_binary_config_is_refused(tmp_path: Path) -> None:
    big = tmp_path / "big.yaml"
    with open(big, "wb") as handle:
        handle.truncate(MAX_CONFIG_BYTES + 1)
    with pytest.raises(UserError, match="larger than"):
        load_settings(big, env={})
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(b"model: {n_estimators: 5}\n\xff\xfe")
    with pytest.raises(UserError, match="is not UTF-8 text"):
        load_settings(binary, env={})


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("api: " + "[" * 50_000 + "]" * 50_000 + "\n", "nested too deeply"),
        ("api: {port: " + "9" * 5000 + "}\n", "integer of thousands of digits"),
        ("api: {port: !!python/object/apply:os.system ['echo SECRET-7f3a']}\n", "could not determine a constructor"),
        ("api:\n  port: 1\n\tSECRET-7f3a: 2\n", "at line 3, column 1"),
        ('"SECRET-7f3a\n\n', "not valid YAML"),
    ],
)
def test_unreadable_yaml_is_one_line_and_echoes_nothing(tmp_path: Path, text: str, message: str) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text(text)
    with pytest.raises(UserError) as caught:
        load_settings(config, env={})
    said = str(caught.value)
    assert message in said and "\n" not in said and "SECRET" not in said and len(said) < 400


def test_a_huge_or_multiline_bad_value_is_shown_short_on_one_line(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(f'threshold: {{percentile: "{"x" * 5000}"}}\n"evil\\nkey": 1\n')
    with pytest.raises(UserError) as caught:
        load_settings(config, env={})
    assert "\n" not in str(caught.value) and len(str(caught.value)) < 400


@pytest.mark.parametrize(("text", "message"), [
    ("[]\n", "must hold a mapping at the top level, not list"),
    ('""\n', "must hold a mapping at the top level, not str"),
    ("0\n", "must hold a mapping at the top level, not int"),
    ("events:\n  event_types: [login, LOGIN, view]\n", "entries 'login' and 'LOGIN' are the same name"),
    ("events:\n  event_types: [login, ' sp ']\n", "entry ' sp ' has surrounding whitespace"),
    ("events:\n  device_types: [desktop, '']\n", "entry '' has surrounding whitespace or is blank"),
    ('events:\n  event_types: [login, "login\\u200b"]\n',
     r"entry 'login\\u200b' contains the control, invisible or format character U\+200B"),
    ('events:\n  device_types: [desktop, "mob\\0ile"]\n', r"entry 'mob\\x00ile' contains .* U\+0000"),
    ('events:\n  device_types: [desktop, "mob\\x1cile"]\n', r"entry 'mob\\x1cile' contains .* U\+001C"),
])
def test_falsy_top_levels_and_untrimmed_or_case_colliding_categories_are_refused(
        tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(UserError, match=message) as caught:
        load_settings(path, env={})
    assert "\n" not in str(caught.value)


def test_an_empty_or_comment_only_config_means_every_default(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("# nothing set here\n")
    assert load_settings(path, env={}).events == Settings().events


@pytest.mark.parametrize(("env", "setting"), [
    ({"UBA_FEATURES__PRIOR_STRENGTH_DAYS": "1e999"}, "features.prior_strength_days"),
    ({"UBA_MONITORING__PSI_WARN": "1.0e+999"}, "monitoring.psi_warn"),
    ({"UBA_MODEL__RANDOM_STATE": "4294967296"}, "model.random_state"),
    ({"UBA_MODEL__RANDOM_STATE": "-1"}, "model.random_state"),
    ({"UBA_MODEL__MAX_SAMPLES": "0"}, "model.max_samples"),
])
def test_values_train_would_crash_on_are_refused_at_load(env: dict[str, str], setting: str) -> None:
    """Infinite floats, and seeds or sample counts outside scikit-learn's ranges, used to load
    and then end ``train`` in a traceback (after reading the whole window)."""
    with pytest.raises(UserError, match=rf"invalid setting '{re.escape(setting)}'"):
        load_settings(env=env)


def test_train_refuses_an_infinite_setting_in_one_line(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["train", "--data-dir", str(tmp_path), "--end-date", "2026-03-21",
                                      "--model-dir", str(tmp_path / "m")],
                                env={"UBA_FEATURES__MIN_HOUR_SPREAD": "1e999"})
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    (line,) = result.output.strip().splitlines()
    assert line.startswith("error: invalid setting 'features.min_hour_spread'") and "finite number" in line


# --- the environment layer (pydantic-settings sources) ------------------------------


def test_bad_env_value_names_the_variable_value_and_what_is_allowed() -> None:
    with pytest.raises(UserError) as caught:
        load_settings(env={"UBA_SCORING__CHUNK_ROWS": "0"})
    message = str(caught.value)
    assert message == ("invalid setting 'scoring.chunk_rows' = 0: Input should be greater than or equal to 1 "
                       "(environment UBA_SCORING__CHUNK_ROWS)")


@pytest.mark.parametrize(("env", "message"), [
    ({"UBA_SCORING__WORKERS": "3"}, "unknown setting 'scoring.workers' (environment UBA_SCORING__WORKERS)"),
    ({"UBA_SCORNIG__CHUNK_ROWS": "3"}, "unknown setting 'scornig' (environment UBA_SCORNIG__CHUNK_ROWS)"),
])
def test_unknown_env_setting_is_refused(env: dict[str, str], message: str) -> None:
    """A misspelt variable would otherwise change nothing, silently."""
    with pytest.raises(UserError, match=re.escape(message)):
        load_settings(env=env)


def test_env_names_without_a_double_underscore_are_not_settings() -> None:
    env = {"UBA_API_KEYS": "k", "UBA_FAULT_SHARD_DELAY_SEC": "1", "UBA_LOG_LEVEL": "debug"}
    assert load_settings(env=env) == load_settings(env={})


def test_env_values_are_read_as_yaml_and_nested_keys_reach_nested_sections() -> None:
    settings = load_settings(env={"UBA_EVENTS__EVENT_TYPES": "[login, view]", "uba_model__n_estimators": "33",
                                  "UBA_USER_DAY__TREND__WINDOW_DAYS": "9", "UBA_RAY__ADDRESS": "null",
                                  "UBA_RISK__CRITICALITY_WEIGHTS__HIGH": "2"})
    assert settings.events.event_types == ("login", "view")
    assert settings.model.n_estimators == 33
    assert settings.user_day.trend.window_days == 9 and settings.user_day.trend.min_days == 3
    assert settings.ray.address is None
    assert settings.risk.criticality_weights["high"] == 2.0


def test_section_env_name_beats_the_short_path_name_and_an_empty_one_is_unset(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("paths: {data_dir: from-file, model_dir: m-file}\n")
    env = {"UBA_DATA_DIR": "short", "UBA_PATHS__DATA_DIR": "sectioned", "UBA_MODEL_DIR": ""}
    paths = load_settings(config, env=env).paths
    assert (paths.data_dir, paths.model_dir) == (Path("sectioned"), Path("m-file"))


def test_settings_constructor_reads_no_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only load_settings reads the layers: Settings() is the defaults whatever the process has set."""
    monkeypatch.setenv("UBA_MODEL__N_ESTIMATORS", "11")
    monkeypatch.setenv("UBA_DATA_DIR", "elsewhere")
    assert Settings().model.n_estimators == 200 and Settings().paths.data_dir == Path("data")
    assert load_settings().model.n_estimators == 11


def test_a_non_text_top_level_key_is_an_unknown_setting(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("1: 2\n")
    with pytest.raises(UserError, match="unknown setting '1'"):
        load_settings(config, env={})


def test_a_null_top_level_yaml_key_is_one_line_not_a_traceback(tmp_path: Path) -> None:
    """``null:`` (or ``~:``) parses as the key None, which once passed the non-text check
    and reached pydantic as a keyword (TypeError)."""
    for text in ("null: 1\n", "~: 1\n"):
        cfg = tmp_path / "n.yaml"
        cfg.write_text(text)
        with pytest.raises(UserError, match=r"^unknown setting 'None' \("):
            load_settings(cfg, env={})


def test_an_error_line_never_prints_a_urls_credentials_path_or_query() -> None:
    """The sink validator refuses user:password in a URL; its error line must not echo them,
    nor the path (a Slack webhook URL's path is its secret)."""
    url = "https://user:s3cretPassw0rd@h.example/services/T0/B0/pathSecret?token=abc"
    env = {"UBA_ALERTING__SINKS": f"[{{type: webhook, name: a, url: '{url}'}}]"}
    with pytest.raises(UserError) as caught:
        load_settings(None, env=env)
    line = str(caught.value)
    assert "alerting.sinks.0.url" in line and "https://***@h.example/...?***" in line
    assert "s3cretPassw0rd" not in line and "token=abc" not in line and "pathSecret" not in line


def _read_by(loader: type, text: str) -> tuple[str, object]:
    from uba.settings import _yaml_problem

    try:
        return "read", yaml.load(text, Loader=loader)
    except Exception as exc:  # noqa: BLE001  # any failure: compared as the one-line problem
        return "refused", _yaml_problem(exc)


def _parsed(text: str) -> tuple[str, object]:
    from uba.settings import parse_yaml

    try:
        return "read", parse_yaml(text)
    except ValueError as exc:
        return "refused", str(exc)


def test_configs_read_through_libyaml_as_the_pure_python_loader_reads_them() -> None:
    """Settings are parsed by libyaml when PyYAML has it (~3 ms instead of ~50 ms per command
    start), falling back to the pure-Python loader for anything but a clean read: every
    config of the repository and of the hostile corpus reads (or is refused, in the same
    words) as the pure-Python loader alone did, aliases and repeated keys included."""
    from uba.settings import _UNDECIDED, _NoAliasLoader, _parse_with_libyaml

    texts = {path.name: path.read_bytes().decode("utf-8", errors="replace")
             for pattern in ("configs/*.yaml", "tests/hostile/config/*.yaml") for path in sorted(REPO.glob(pattern))}
    texts.update({"alias in a flow": "a: &x [1]\nb: [*x]\n", "merge key": "a: &x {b: 1}\nc: {<<: *x}\n",
                  "repeated key": "a: 1\nb: 2\na: 3\n", "tab indent": "a:\n\tb: 1\n", "empty": "", "comment": "# x\n",
                  "bell character": "a: \"\\a\"\nb: \x07\n", "bom": "\ufeffa: 1\n",
                  # where libyaml's scanner accepts what PyYAML's refuses, or reads it otherwise
                  # (a review found these): tabs, a mark after the first character, "?" in a flow
                  "tab value": "a:\t1\n", "tab in a flow": "a: [x,\ty]\n", "trailing tab": "a: 1\t\n",
                  "question mark in a flow": "a: [x, y?]\n", "bom at a line's end": "a:\n  b: 1\n\ufeff",
                  "bom before an indented key": "api:\n\ufeff  port: 8080\n",
                  # an empty node tagged "!" (libyaml: "", PyYAML: null), a comment glued to a
                  # block scalar's header (libyaml reads it, PyYAML refuses it)
                  "empty non-specific tag": "ray:\n  object_store_memory_mb: !\n",
                  "empty non-specific tag in a flow": "a: [!, 1]\n", "verbatim empty tag": "a: !<!>\n",
                  "comment on a block header": "api:\n  host: >#note\n    127.0.0.1\n",
                  "comment on a chomped block header": "a: |2-#\n  x\n"})
    fast = [name for name, text in texts.items() if _parse_with_libyaml(text) is not _UNDECIDED]
    assert len(texts) > 40 and "default.yaml" in fast
    for name, text in texts.items():
        assert _parsed(text) == _read_by(_NoAliasLoader, text), name


@pytest.mark.parametrize(("text", "setting"), [
    ('alerting:\n  sinks:\n    - {type: webhook, name: "siem\\n", url: "http://127.0.0.1:9/x"}\n', "alerting.sinks.0.name"),
    ('alerting:\n  sinks:\n    - {type: webhook, name: siem, url: "http://127.0.0.1:9/x", secret_envs: ["KEY\\n"]}\n',
     "alerting.sinks.0.secret_envs"),
    ('alerting:\n  sinks:\n    - {type: syslog, name: s, host: 127.0.0.1, app_name: "uba\\n"}\n', "alerting.sinks.0.app_name"),
    ('api:\n  host: "127.0.0.1\\n"\n', "api.host"),
    ('api:\n  host: "http://0.0.0.0"\n', "api.host"),
])
def test_a_name_or_host_with_a_final_newline_or_a_scheme_is_refused(tmp_path: Path, text: str, setting: str) -> None:
    """Patterns ended by "$" also match before a final newline: "siem\\n" was a sink name, "uba\\n"
    an RFC 5424 APP-NAME (a newline inside a syslog header), and "127.0.0.1\\n" reached uvicorn."""
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(UserError, match=rf"invalid setting '{re.escape(setting)}"):
        load_settings(path)


@pytest.mark.parametrize("host", ["127.0.0.1", "0.0.0.0", "::", "::1", "localhost", "uba.internal"])
def test_ordinary_bind_addresses_load(tmp_path: Path, host: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(f'api:\n  host: "{host}"\n')
    assert load_settings(path).api.host == host


def test_a_training_window_shorter_than_its_minimum_is_refused_at_load(tmp_path: Path) -> None:
    """Every plain `train` (the weekly CronJob passes no flags) would be refused otherwise."""
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  window_days: 5\n")
    with pytest.raises(UserError, match=r"invalid setting 'train'.*min_days \(7\) is more than window_days \(5\)"):
        load_settings(path)
    path.write_text("train:\n  window_days: 5\n  min_days: 5\n")
    assert load_settings(path).train.min_days == 5
