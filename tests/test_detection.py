"""The product's core promise, end to end through the real CLI: the same 03:00 event is an
alert for a strict 9-to-5 user, with the hour as its top reason, and ordinary for a
night-shift user.

Generated history -> `train` -> the two events ingested from a CSV like real logs ->
`score --date` -> the scored Parquet output.

Not on conftest's shared world: it needs a persona mix of office and night workers only,
and it ingests its two events into its own data directory.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

UBA = str(Path(sys.executable).with_name("uba-batch"))
START, TRAIN_END, DAY = "2026-03-02", "2026-03-15", "2026-03-16"  # DAY is a Monday
ENV = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


def _uba(*args: str) -> None:
    result = subprocess.run([UBA, *args], capture_output=True, text=True, env=ENV)
    assert result.returncode == 0, result.stderr[-2000:]


def _hour_distance(a: float, b: float) -> float:
    d = abs(a - b) % 24
    return min(d, 24 - d)


def _pick(users: pl.DataFrame, persona: str, hour: int) -> dict:
    """The steadiest user of a persona whose usual hours are farthest from / closest to ``hour``."""
    rows = users.filter((pl.col("persona") == persona) & ~pl.col("is_erratic")).to_dicts()
    far = persona == "office"
    key = (lambda u: (-_hour_distance(u["hour_centre"], hour), u["hour_spread"])) if far else \
          (lambda u: (_hour_distance(u["hour_centre"], hour), u["hour_spread"]))
    return sorted(rows, key=key)[0]


def _ordinary_event(user: dict, event_id: str, hour: int) -> dict:
    """Everything about the event is this user's habit except, possibly, the hour."""
    return {
        "event_id": event_id,
        "user_id": user["user_id"],
        "timestamp": f"{DAY}T{hour:02d}:20:00Z",
        "event_type": "view",
        "session_duration_sec": round(user["session_median_sec"], 1),
        "events_in_session": max(1, int(math.floor(user["actions_median"]))),
        "device_type": "mobile" if user["mobile_share"] > 0.5 else "desktop",
    }


@pytest.fixture(scope="module")
def scored(tmp_path_factory: pytest.TempPathFactory) -> tuple[pl.DataFrame, dict, dict]:
    root = tmp_path_factory.mktemp("detection")
    data, models, out = root / "data", root / "models", root / "out"
    _uba("generate", "--out", str(data), "--users", "160", "--days", "15", "--start", START,
         "--seed", "5", "--persona-mix", "office=0.6,night=0.4")
    users = pl.read_parquet(data / "labels" / "users.parquet")
    office, night = _pick(users, "office", 3), _pick(users, "night", 3)
    assert _hour_distance(office["hour_centre"], 3) >= 7, office
    assert _hour_distance(night["hour_centre"], 3) <= 3, night
    _uba("train", "--data-dir", str(data), "--end-date", TRAIN_END, "--window-days", "14",
         "--model-dir", str(models))
    injected = pl.DataFrame([_ordinary_event(office, "probe-office-0300", 3),
                             _ordinary_event(night, "probe-night-0300", 3)])
    csv = root / "probe.csv"
    injected.write_csv(csv)
    _uba("ingest", str(csv), "--data-dir", str(data))
    _uba("score", "--date", DAY, "--data-dir", str(data), "--model-dir", str(models),
         "--output-dir", str(out), "--in-process")
    scores = pl.read_parquet(out / "scores" / f"event_date={DAY}" / "*.parquet")
    return scores, office, night


def _row(scores: pl.DataFrame, event_id: str) -> dict:
    rows = scores.filter(pl.col("event_id") == event_id).to_dicts()
    assert len(rows) == 1, event_id
    return rows[0]


def test_off_hours_event_of_a_nine_to_five_user_is_flagged_for_the_hour(scored) -> None:
    scores, office, _ = scored
    row = _row(scores, "probe-office-0300")
    assert row["is_anomaly"], (row["anomaly_score"], row["threshold"], row["reasons"])
    assert row["reason_kinds"][0] == "hour", row["reasons"]
    assert "03:00" in row["reasons"][0]


def test_same_hour_is_ordinary_for_a_night_shift_user(scored) -> None:
    scores, _, night = scored
    row = _row(scores, "probe-night-0300")
    assert not row["is_anomaly"], (row["anomaly_score"], row["threshold"], row["reasons"])
    assert "hour" not in row["reason_kinds"][:1]
    office_score = _row(scores, "probe-office-0300")["anomaly_score"]
    assert row["anomaly_score"] < office_score
