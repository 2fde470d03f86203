"""`uba-batch train` on a window only partly covered by events, through the real CLI.

A window ending the day after the data starts trained on those two days, printed the
whole window as if it had learned from it, replaced LATEST and said nothing; the bundle
alone recorded ``days_with_data``. Now the summary says how many days had events, a
window with events on fewer than ``train.min_days`` (``--min-days``) days is refused in
one line naming them, and a window with days without events trains with a warning.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from jobs.cli import cli

START, DAYS = "2026-03-01", 10  # events on 2026-03-01..2026-03-10
ENV = {"UBA_MODEL__N_ESTIMATORS": "20", "RAY_USAGE_STATS_ENABLED": "0"}


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("train-window") / "data"
    made = CliRunner().invoke(cli, ["generate", "--out", str(root), "--users", "40", "--days", str(DAYS),
                                    "--start", START, "--seed", "4"], env=ENV)
    assert made.exit_code == 0, made.output
    return root


def _train(data: Path, models: Path, *args: str, **env: str) -> Result:
    return CliRunner().invoke(cli, ["train", "--data-dir", str(data), "--model-dir", str(models),
                                    "--output-dir", str(models.parent / "out"), *args], env={**ENV, **env})


def _latest(models: Path) -> str:
    return (models / "LATEST").read_text().strip()


def test_a_window_with_events_on_two_days_is_refused_naming_them_and_keeps_latest(data: Path,
                                                                                  tmp_path: Path) -> None:
    models = tmp_path / "models"
    full = _train(data, models, "--end-date", "2026-03-10", "--window-days", "10")
    assert full.exit_code == 0, full.output
    before = _latest(models)
    refused = _train(data, models, "--end-date", "2026-03-02")  # the default 21-day window
    assert refused.exit_code == 1 and isinstance(refused.exception, SystemExit), refused.output
    (line,) = refused.output.strip().splitlines()
    assert line == ("error: training window 2026-02-10..2026-03-02 (21 days) has events on only 2 days "
                    "(2026-03-01..2026-03-02); train needs at least 7 (train.min_days), or the baselines and "
                    "threshold are learned from users' first days: move --end-date or widen --window-days, or "
                    "pass --min-days 2 to train on these days anyway"), line
    assert _latest(models) == before and len(list(models.glob("*/bundle.json"))) == 1


def test_min_days_trains_on_them_with_a_warning_and_says_how_many_days_had_events(data: Path,
                                                                                   tmp_path: Path) -> None:
    models = tmp_path / "models"
    result = _train(data, models, "--end-date", "2026-03-02", "--min-days", "2")
    assert result.exit_code == 0, result.output
    assert result.stderr.strip().splitlines()[-1] == (
        "warning: training window 2026-02-10..2026-03-02 (21 days) has events on 2 of its days; none on "
        "2026-02-10..2026-02-28 (those days add nothing to the model)")
    assert "events from 2 of the 21 days 2026-02-10..2026-03-02;" in result.stdout, result.stdout
    bundle = json.loads((models / _latest(models) / "bundle.json").read_text())
    assert bundle["training_window"]["days_with_data"] == 2


def test_a_window_with_events_on_every_day_trains_without_a_warning(data: Path, tmp_path: Path) -> None:
    result = _train(data, tmp_path / "models", "--end-date", "2026-03-10", "--window-days", "10")
    assert result.exit_code == 0, result.output
    assert "warning" not in result.output
    assert "events from 10 of the 10 days 2026-03-01..2026-03-10;" in result.stdout, result.stdout


def test_the_minimum_is_a_setting_and_a_window_without_events_is_one_line(data: Path, tmp_path: Path) -> None:
    models = tmp_path / "models"
    strict = _train(data, models, "--end-date", "2026-03-10", "--window-days", "10", UBA_TRAIN__MIN_DAYS="11")
    assert strict.exit_code == 1, strict.output
    assert "has events on only 10 days (2026-03-01..2026-03-10); train needs at least 11" in strict.output
    empty = _train(data, models, "--end-date", "2026-02-27", "--window-days", "7")
    assert empty.exit_code == 1, empty.output
    (line,) = empty.output.strip().splitlines()
    assert line.startswith("error: training window 2026-02-21..2026-02-27 (7 days) has no events"), line
    assert not (models / "LATEST").exists()


def test_a_refused_train_creates_no_model_directory(data: Path, tmp_path: Path) -> None:
    """A train refused for too few days (or a window without events) on a fresh
    --model-dir left an empty folder, parents and all, that looked like a model
    directory; an existing empty one must stay empty (no version folder)."""
    fresh = tmp_path / "models" / "fresh"
    for window in (["--end-date", "2026-03-02"], ["--end-date", "2026-02-20"]):  # 2 days; none
        refused = _train(data, fresh, *window)
        assert refused.exit_code == 1 and refused.output.startswith("error: training window"), refused.output
        assert not (tmp_path / "models").exists(), sorted(p.name for p in (tmp_path / "models").rglob("*"))
    empty = tmp_path / "empty"
    empty.mkdir()
    assert _train(data, empty, "--end-date", "2026-03-02").exit_code == 1
    assert list(empty.iterdir()) == []


def test_a_model_directory_that_cannot_be_made_fails_before_training(data: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    result = _train(data, blocker / "models", "--end-date", "2026-03-10", "--window-days", "10")
    assert result.exit_code == 1, result.output
    assert result.output.strip() == f"error: cannot create the model directory {blocker / 'models'}: Not a directory"
