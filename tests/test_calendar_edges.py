"""Dates at the calendar edges (0001-01-01, 9999-12-31): a clipped window or a one-line error,
never ``OverflowError: date value out of range`` (hardening)."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest
from click.testing import CliRunner

from jobs.cli import cli
from uba.errors import UserError
from uba.features.store import lookback_days
from uba.generate import GenerationOptions


def test_a_lookback_window_is_clipped_at_the_first_representable_day() -> None:
    assert lookback_days(date.min, 28) == []
    assert lookback_days(date(1, 1, 3), 28) == [date(1, 1, 1), date(1, 1, 2)]
    assert lookback_days(date(2026, 3, 9), 2) == [date(2026, 3, 7), date(2026, 3, 8)]


def test_a_generated_window_past_the_last_representable_day_is_one_line() -> None:
    with pytest.raises(UserError, match=r"--days 10 from --start 9999-12-25 runs past 9999-12-31.*at most 7 days"):
        GenerationOptions(users=5, days=10, start=date(9999, 12, 25)).check()
    assert GenerationOptions(users=5, days=7, start=date(9999, 12, 25)).last == date.max


def _run(args: list[str]) -> tuple[int, str]:
    result = CliRunner().invoke(cli, args, env={"UBA_MODEL__N_ESTIMATORS": "20", "RAY_USAGE_STATS_ENABLED": "0"})
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    return result.exit_code, result.output


def test_the_first_days_of_the_calendar_train_score_and_backfill(tmp_path: Path) -> None:
    data, models, out = tmp_path / "d", tmp_path / "m", tmp_path / "o"
    model = ["--data-dir", str(data), "--model-dir", str(models)]
    paths = [*model, "--output-dir", str(out)]
    assert _run(["generate", "--out", str(data), "--users", "20", "--days", "4", "--start", "0001-01-01",
                 "--seed", "3"])[0] == 0
    code, output = _run(["train", *model, "--end-date", "0001-01-03", "--window-days", "30", "--min-days", "3"])
    assert code == 0, output  # the window is clipped at 0001-01-01
    assert "from 3 of the 3 days 0001-01-01..0001-01-03;" in output, output
    code, output = _run(["score", "--date", "0001-01-01", "--in-process", *paths])
    assert code == 0 and "scored 0001-01-01" in output, output  # no history before the first day
    code, output = _run(["backfill", "--start", "0001-01-01", "--end", "0001-01-02", "--in-process", *paths])
    assert code == 0 and "0 failed" in output, output
    code, output = _run(["report", "--date", "0001-01-01", "--output-dir", str(out)])
    assert code == 0, output


def test_the_last_days_of_the_calendar(tmp_path: Path) -> None:
    data, models = tmp_path / "d", tmp_path / "m"
    code, output = _run(["generate", "--out", str(data), "--start", "9999-12-25", "--days", "10"])
    assert code != 0 and output.strip().splitlines()[-1].startswith("error: --days 10 from --start 9999-12-25")
    assert _run(["generate", "--out", str(data), "--users", "10", "--start", "9999-12-25", "--days", "7"])[0] == 0
    code, output = _run(["train", "--data-dir", str(data), "--model-dir", str(models), "--end-date", "9999-12-31"])
    assert code != 0 and output.strip().splitlines()[-1].startswith("error: --end-date 9999-12-31 is the last")
