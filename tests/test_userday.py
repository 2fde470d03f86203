"""User-day alerts on hand-made histories, through the real aggregates, baselines and storage
(the generated exfiltration day is checked in test_operations_e2e.py)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from uba import io
from uba.alerting.userday import score_user_days, stored_day_alerts
from uba.features import protected_baselines_as_of
from uba.features.pipeline import prepare_aggregates
from uba.schema import EVENT_SCHEMA
from uba.settings import load_settings

FIRST = date(2026, 2, 2)            # a Monday; four weeks of history follow
WEDNESDAY = date(2026, 3, 4)
SATURDAY = date(2026, 3, 7)


def _session(user: str, day: date, index: int, hour: int, n: int, downloads: int) -> list[dict]:
    start = datetime(day.year, day.month, day.day, hour, 5 * index % 60, tzinfo=UTC)
    sid = f"{user}-{day.isoformat()}-{index}"
    rows = []
    for k in range(n):
        kind = "download" if k < downloads else ("login" if k == n - 1 else "view")
        ts = start + timedelta(seconds=30 * k)
        rows.append({"event_id": f"{sid}-{k}", "user_id": user, "timestamp": ts, "event_type": kind,
                     "session_duration_sec": 600.0, "events_in_session": n, "device_type": "desktop",
                     "hour_of_day": ts.hour, "day_of_week": ts.weekday(), "session_id": sid})
    return rows


def _day(user: str, day: date, sessions: int, events_each: int, downloads: int) -> list[dict]:
    rows: list[dict] = []
    for i in range(sessions):
        rows += _session(user, day, i, 9 + i % 8, events_each, downloads // sessions + (i < downloads % sessions))
    return rows


def _history() -> dict[date, list[dict]]:
    days: dict[date, list[dict]] = {}
    for offset in range((SATURDAY - FIRST).days):
        day = FIRST + timedelta(days=offset)
        if day.weekday() >= 5:
            continue
        rows = _day("steady", day, 2, 5, 1) + _day("quiet", day, 2, 5, 1) + _day("tiny", day, 1, 4, offset % 10 == 0)
        days[day] = rows
    return days


@pytest.fixture
def settings(tmp_path: Path):
    days = _history()
    days[WEDNESDAY] = (
        _day("steady", WEDNESDAY, 8, 4, 12)      # 12 downloads over 8 sessions: exfiltration pattern
        + _day("quiet", WEDNESDAY, 2, 5, 1)      # an ordinary day
        + _day("tiny", WEDNESDAY, 1, 6, 3)       # 3 downloads: many times usual, but too few to matter
        + _day("newbie", WEDNESDAY, 1, 14, 12)   # unknown user, 12 downloads: vs the population
    )
    days[SATURDAY] = _day("quiet", SATURDAY, 2, 5, 0)  # never active on a Saturday before
    for day, rows in days.items():
        io.write_part(pl.DataFrame(rows, schema=EVENT_SCHEMA), tmp_path / "data", io.EVENTS, day)
    return load_settings(overrides={"paths": {"data_dir": tmp_path / "data", "output_dir": tmp_path / "out"}},
                         env={})


def _alerts(settings, day: date) -> dict[str, dict]:
    """The day's alerts as ``score --date`` computes them (``RunOperations.user_day_alerts``):
    its aggregates against the baselines as of the day."""
    prepare_aggregates(settings.paths.data_dir, [day], settings)
    baselines = protected_baselines_as_of(settings.paths.data_dir, day, settings, settings.paths.output_dir)
    alerts, _ = stored_day_alerts(settings, day, baselines)
    return {r["user_id"]: r for r in alerts.iter_rows(named=True)}


def test_exfiltration_day_is_flagged_with_reasons_and_quiet_users_are_not(settings) -> None:
    alerts = _alerts(settings, WEDNESDAY)
    assert set(alerts) == {"steady", "newbie"}
    steady = alerts["steady"]
    assert steady["reason_kinds"][0] in {"spread_downloads", "downloads"}
    assert set(steady["reason_kinds"]) >= {"spread_downloads", "downloads", "sessions"}
    assert steady["n_downloads"] == 12 and steady["n_sessions"] == 8
    assert steady["usual_downloads"] == pytest.approx(1.0, abs=0.2)
    spread = steady["reasons"][steady["reason_kinds"].index("spread_downloads")]
    assert spread.startswith("12 downloads spread over 8 sessions") and "exfiltration" in spread
    assert steady["day_score"] > alerts["newbie"]["day_score"] > 0, "three signals outrank one"
    assert alerts["newbie"]["known_user"] is False and alerts["newbie"]["reason_kinds"] == ["downloads"]
    assert "the population's usual" in alerts["newbie"]["reasons"][0]


def test_first_activity_on_a_never_active_weekday(settings) -> None:
    alerts = _alerts(settings, SATURDAY)
    assert list(alerts) == ["quiet"]
    assert alerts["quiet"]["reason_kinds"] == ["new_weekday"]
    assert alerts["quiet"]["reasons"][0].startswith("active on a Saturday (10 events)")


def test_thresholds_come_from_settings(settings, tmp_path: Path) -> None:
    strict = settings.model_copy(update={"user_day": settings.user_day.model_copy(update={
        "download_ratio": 50.0, "spread_download_ratio": 50.0, "session_ratio": 50.0})})
    assert _alerts(strict, WEDNESDAY) == {}


def _every_row_ranked(today: pl.LazyFrame, baselines: pl.LazyFrame, settings) -> pl.DataFrame:
    """``score_user_days`` as first written: every user-day's candidates ranked, fired or not."""
    from uba.alerting import userday as ud

    users, population = ud._baseline_inputs(baselines)
    joined = ud._with_trends(today, None).join(users, on="user_id", how="left").join(population, how="cross") \
        .with_columns(pl.col("days_active").is_not_null().alias("known_user"),
                      *(ud._usual(rate, settings.prior_days).alias(f"usual_{kind}") for kind, _, rate in ud.RATE_SIGNALS))
    limits = ud._limits(settings)
    candidates = [ud._rate_reason(kind, count, *limits[kind], settings.rate_floor) for kind, count, _ in ud.RATE_SIGNALS]
    candidates += [ud._spread_reason(settings), ud._weekday_reason(settings), pl.col("trend_fired")]
    strength = pl.element().struct.field("strength")
    ranked = pl.concat_list(candidates).list.eval(pl.element().sort_by(strength, descending=True, maintain_order=True)) \
        .list.eval(pl.element().filter(strength > 0))
    return joined.with_columns(ranked.alias("_fired")).with_columns(
        pl.col("_fired").list.eval(strength).list.sum().fill_null(0.0).round(4).alias("day_score"),
        pl.col("_fired").list.eval(pl.element().struct.field("text")).alias("reasons"),
        pl.col("_fired").list.eval(pl.element().struct.field("kind")).alias("reason_kinds"),
        pl.col("event_date").cast(pl.Date), pl.col("days_active").fill_null(0).cast(pl.Int64),
        *(pl.col(f"usual_{kind}").round(3) for kind, _, _ in ud.RATE_SIGNALS),
    ).select(list(ud.ALERT_COLUMNS)).collect()


def test_only_fired_user_days_are_ranked_and_the_others_score_as_before(settings) -> None:
    """Ranking only the user-days that fired something leaves every row as ranking all of
    them did, to the bit: a quiet day's score is an empty sum (-0.0). (The rows' order
    follows a join's, which Polars does not fix; callers sort, ``rank_alerts``.)"""
    prepare_aggregates(settings.paths.data_dir, [WEDNESDAY], settings)
    baselines = protected_baselines_as_of(settings.paths.data_dir, WEDNESDAY, settings, settings.paths.output_dir)
    today = io.scan_partition(settings.paths.data_dir, io.AGGREGATES, WEDNESDAY)
    assert today is not None
    today = pl.concat([today] * 3).with_columns(pl.lit(WEDNESDAY, pl.Date).alias("event_date"))  # quiet and fired rows interleaved
    scored = score_user_days(today, baselines, settings.user_day).collect().sort("user_id")
    reference = _every_row_ranked(today, baselines, settings.user_day).sort("user_id")
    assert scored.equals(reference)
    fired = scored["day_score"] > 0
    assert 0 < fired.sum() < scored.height
    assert np.array_equal(scored["day_score"].to_numpy().view(np.uint64), reference["day_score"].to_numpy().view(np.uint64))
