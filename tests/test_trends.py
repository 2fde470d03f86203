"""Multi-day user-day signals (uba.alerting.trends) on hand-made event partitions, through the real CLI:
``train`` on four weeks of ordinary days, then ``score --date`` on a day that ends a run of
rising downloads for one user and of later, longer sessions for another."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from click.testing import CliRunner

from jobs.cli import cli
from uba import io
from uba.alerting.risk import read_risk
from uba.alerting.trends import trend_signals
from uba.alerting.userday import EXPLAINED_SCHEMA, explained_days, trends_without_explained
from uba.features.protection import without_user_days
from uba.schema import EVENT_SCHEMA, alert_id
from uba.settings import TrendSettings

FIRST = date(2026, 2, 2)
TRAIN_END = date(2026, 3, 1)        # 28 days of ordinary history
DAY = date(2026, 3, 5)              # scored: the fourth day of both campaigns
CAMPAIGN = [date(2026, 3, 2) + timedelta(days=k) for k in range(4)]
EXFIL_DOWNLOADS = (6, 8, 10, 12)    # of 20 events a day, vs usually 1-3
DRIFT_HOURS = (12, 13, 14, 15)      # vs usually 9-10
DRIFT_SECONDS = (1200.0, 1500.0, 1800.0, 2100.0)  # vs usually 600
USERS = ("steady", "exfil", "drifter", *(f"filler{i}" for i in range(5)))
ENV = {"UBA_MODEL__N_ESTIMATORS": "30", "RAY_USAGE_STATS_ENABLED": "0", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


def _session(user: str, day: date, hour: int, n: int, downloads: int, seconds: float) -> list[dict]:
    start = datetime(day.year, day.month, day.day, hour, 0, tzinfo=UTC)
    sid = f"{user}-{day.isoformat()}"
    rows = []
    for k in range(n):
        kind = "login" if k == 0 else ("download" if k <= downloads else "view")
        ts = start + timedelta(seconds=20 * k)
        rows.append({"event_id": f"{sid}-{k}", "user_id": user, "timestamp": ts, "event_type": kind,
                     "session_duration_sec": seconds, "events_in_session": n, "device_type": "desktop",
                     "hour_of_day": ts.hour, "day_of_week": ts.weekday(), "session_id": sid})
    return rows


def _ordinary(user: str, day: date, rng: np.random.Generator) -> list[dict]:
    """One session a day at 9 or 10, 1-3 downloads of 20 events, about ten minutes."""
    return _session(user, day, 9 + int(rng.integers(0, 2)), 20, int(rng.integers(1, 4)),
                    float(rng.normal(600.0, 60.0)))


def _rows(day: date, rng: np.random.Generator) -> list[dict]:
    rows: list[dict] = []
    for user in USERS:
        if day in CAMPAIGN and user == "exfil":
            rows += _session(user, day, 9, 20, EXFIL_DOWNLOADS[CAMPAIGN.index(day)], 600.0)
        elif day in CAMPAIGN and user == "drifter":
            step = CAMPAIGN.index(day)
            rows += _session(user, day, DRIFT_HOURS[step], 20, 2, DRIFT_SECONDS[step])
        else:
            rows += _ordinary(user, day, rng)
    return rows


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Hand-made events written as partitions, a bundle trained and DAY scored with the CLI."""
    root = tmp_path_factory.mktemp("trends")
    rng = np.random.default_rng(3)
    day = FIRST
    while day <= CAMPAIGN[-1]:
        io.write_part(pl.DataFrame(_rows(day, rng), schema=EVENT_SCHEMA), root / "data", io.EVENTS, day)
        day += timedelta(days=1)
    dirs = ["--data-dir", str(root / "data"), "--model-dir", str(root / "models")]
    for args in (["train", *dirs, "--end-date", TRAIN_END.isoformat(), "--window-days", "28"],
                 ["score", *dirs, "--output-dir", str(root / "out"), "--date", DAY.isoformat()]):
        result = CliRunner().invoke(cli, args, env=ENV)
        assert result.exit_code == 0, (args[0], result.output, result.exception)
    return root


def _user_days(world: Path) -> dict[str, dict]:
    stored = pl.read_parquet(io.partition_files(world / "out", io.FLAGGED_USERS, DAY))
    return {r["user_id"]: r for r in stored.iter_rows(named=True)}


def test_rising_downloads_fire_with_the_days_and_the_usual(world: Path) -> None:
    exfil = _user_days(world)["exfil"]
    assert exfil["reason_kinds"] == ["rising_downloads"]
    reason = exfil["reasons"][0]
    # four days far above usual: the CUSUM (at most 4 x (max_day_z - cusum_k) = 9) is the stronger view
    assert reason.startswith("downloads above usual, adding up over the last 4 active days: 6, 8, 10, 12 vs usually 2.")
    found = re.search(r"\(CUSUM ([0-9.]+) sd over 22 earlier active days\)$", reason)
    assert found is not None and TrendSettings().cusum_h < float(found.group(1)) <= 9.0, reason
    strength = float(found.group(1)) / TrendSettings().cusum_h
    assert exfil["day_score"] == pytest.approx(strength, abs=0.05 / TrendSettings().cusum_h), "CUSUM / cusum_h"


def test_later_hours_and_longer_sessions_fire_for_the_drifting_user(world: Path) -> None:
    drifter = _user_days(world)["drifter"]
    assert set(drifter["reason_kinds"]) == {"later_hours", "longer_sessions"}
    hours = drifter["reasons"][drifter["reason_kinds"].index("later_hours")]
    # the run may start on ordinary days that happened to sit above the mean (10:00 vs 09:38)
    assert hours.startswith("active later than usual (mean hour), adding up over the last 4 active days: ")
    assert "12:00, 13:00, 14:00, 15:00 vs usually 09:" in hours
    lengths = drifter["reasons"][drifter["reason_kinds"].index("longer_sessions")]
    usual = re.search(r"20\.0, 25\.0, 30\.0, 35\.0 min vs usually ([0-9.]+) min", lengths)
    assert usual is not None and 9.0 < float(usual.group(1)) < 11.0, lengths


def test_steady_users_get_no_multi_day_signal(world: Path) -> None:
    days = _user_days(world)
    assert set(days) <= {"exfil", "drifter"}, f"ordinary users flagged: {sorted(set(days) - {'exfil', 'drifter'})}"


def test_entity_risk_counts_the_signals_as_user_day_contributions(world: Path) -> None:
    risk = read_risk(world / "out", DAY)
    assert risk is not None
    rows = {r["user_id"]: r for r in risk.iter_rows(named=True)}
    kinds = {k for c in rows["drifter"]["contributions"] if c["type"] == "user_day" for k in c["reason_kinds"]}
    assert kinds == {"later_hours", "longer_sessions"}
    assert rows["exfil"]["contributions"][0]["reason_kinds"] == ["rising_downloads"]


def _frame(values: list[float], today: date) -> pl.LazyFrame:
    """Aggregates of one user, one row a day ending ``today``: ``values`` are daily downloads
    of 20 events; hours and lengths are constant."""
    days = [today - timedelta(days=len(values) - 1 - k) for k in range(len(values))]
    return pl.LazyFrame({
        "user_id": ["u"] * len(values), "event_date": days, "n_events": [20] * len(values),
        "n_downloads": [int(v) for v in values], "sum_hour_sin": [20 * 0.0] * len(values),
        "sum_hour_cos": [20.0] * len(values), "sum_log_duration": [20 * 6.4] * len(values),
    })


def test_one_extreme_day_does_not_carry_a_run_of_ordinary_days() -> None:
    history = [1, 2, 1, 3, 2, 1, 2, 2, 1, 3, 2, 1, 2, 2]
    settings = TrendSettings()
    extreme_then_ordinary = _frame([*history, 0, 0, 0, 0, 18, 3, 3], DAY)
    assert trend_signals(extreme_then_ordinary, DAY, settings).collect().is_empty()
    steadily_up = _frame([*history, 0, 0, 0, 0, 6, 7, 8], DAY)
    fired = trend_signals(steadily_up, DAY, settings).collect()
    assert fired["trend_fired"][0][0]["kind"] == "rising_downloads"


def _reasons(frame: pl.LazyFrame) -> list[str]:
    fired = trend_signals(frame, DAY, TrendSettings()).collect()
    return [] if fired.is_empty() else [signal["text"] for signal in fired["trend_fired"][0]]


def test_a_trend_two_days_old_fires_through_the_cusum() -> None:
    """Two days far above usual: too short for a run (min_days 3), enough for the CUSUM."""
    history = [1, 2, 1, 3, 2, 1, 2, 2, 1, 3, 2, 1, 2, 2]
    assert TrendSettings().min_days == 3
    reasons = _reasons(_frame([*history, 0, 0, 0, 0, 0, 8, 9], DAY))
    assert len(reasons) == 1 and reasons[0].startswith(
        "downloads above usual, adding up over the last 2 active days: 8, 9 vs usually 1.8"), reasons
    assert _reasons(_frame([*history, 0, 0, 0, 0, 0, 0, 9], DAY)) == [], "one day alone is not a trend"


def test_a_day_below_usual_does_not_start_the_cusum_over() -> None:
    """The run ends at the first ordinary day counted back; the CUSUM only gives a little back."""
    history = [1, 2, 1, 3, 2, 1, 2, 2, 1, 3, 2, 1, 2, 2]
    reasons = _reasons(_frame([*history, 0, 0, 0, 6, 7, 1, 8], DAY))
    assert len(reasons) == 1 and reasons[0].startswith(
        "downloads above usual, adding up over the last 4 active days: 6, 7, 1, 8 vs usually"), reasons


def test_the_cusum_speaks_only_while_the_user_is_still_above_usual() -> None:
    """Three days far above usual leave the CUSUM over its limit for a while; a day back at
    usual does not fire (the days already fired, and entity risk carries them), a day
    still above usual does."""
    history = [1, 2, 1, 3, 2, 1, 2, 2, 1, 3, 2, 1, 2, 2]
    assert _reasons(_frame([*history, 0, 0, 0, 8, 9, 10, 1], DAY)) == []
    reasons = _reasons(_frame([*history, 0, 0, 0, 8, 9, 10, 3], DAY))
    assert len(reasons) == 1 and "adding up over the last 4 active days: 8, 9, 10, 3" in reasons[0], reasons


def test_too_little_history_is_not_judged() -> None:
    settings = TrendSettings()
    short = _frame([1, 2, 1, 6, 7, 8, 9, 10, 11, 12], DAY)  # 3 days before the 7-day window
    assert trend_signals(short, DAY, settings).collect().is_empty()


def _many_users(users: int, days: int, today: date) -> pl.LazyFrame:
    """Random daily aggregates of many users, one chunk per day as when read from the
    days' files: enough rows and chunks that Polars splits the work into several pieces,
    as on a real day of 20,000 users."""
    rng = np.random.default_rng(17)
    n = users * days
    events = rng.integers(5, 60, n)
    angle = rng.normal(2.4, 0.4, n)
    return pl.LazyFrame({
        "user_id": np.repeat([f"u{i:05d}" for i in range(users)], days),
        "event_date": pl.Series([today - timedelta(days=days - 1 - k) for k in range(days)] * users, dtype=pl.Date),
        "n_events": events, "n_downloads": rng.binomial(events, 0.08),
        "sum_hour_sin": events * np.sin(angle), "sum_hour_cos": events * np.cos(angle),
        "sum_log_duration": events * rng.normal(6.4, 0.5, n),
    })


def test_signals_are_the_same_bits_on_every_run() -> None:
    """The reference's per-user float sums must not depend on how the engine splits the
    rows: the streaming engine added them in a varying order, and the strengths of the
    same day's signals differed in their last bits from run to run."""
    frame = _many_users(20_000, 18, DAY).collect()
    history = pl.concat([part for _, part in frame.group_by("event_date", maintain_order=True)], rechunk=False).lazy()
    lenient = TrendSettings(alpha=0.3, cusum_h=1.5)
    runs = [trend_signals(history, DAY, lenient).collect().sort("user_id") for _ in range(3)]
    assert runs[0].height > 1_000
    assert all(run.equals(runs[0]) for run in runs[1:])


def test_an_alerted_one_off_day_does_not_start_an_excursion_of_its_kind() -> None:
    """A day whose fact an event alert already told (``explained_days``) is left out of that
    signal only: the alerted spree plus one day above usual fire without it, not with it; an
    alert telling another fact (the hour) leaves the download signal as it was."""
    history = [1, 2, 1, 3, 2, 1, 2, 2, 1, 3, 2, 1, 2, 2]
    frame = _frame([*history, 0, 0, 0, 0, 0, 18, 6], DAY)
    settings = TrendSettings()
    assert [s["kind"] for s in trend_signals(frame, DAY, settings).collect()["trend_fired"][0]] == [
        "rising_downloads"]

    def explained(kind: str) -> pl.DataFrame:
        return pl.DataFrame({"user_id": ["u"], "event_date": [DAY - timedelta(days=1)], "kind": [kind]},
                            schema=EXPLAINED_SCHEMA)

    assert trends_without_explained(frame, DAY, settings, explained("rising_downloads")).collect().is_empty()
    other = trends_without_explained(frame, DAY, settings, explained("later_hours")).collect()
    assert other.to_dicts() == trend_signals(frame, DAY, settings).collect().to_dicts()
    none = trends_without_explained(frame, DAY, settings, pl.DataFrame(schema=EXPLAINED_SCHEMA)).collect()
    assert none.to_dicts() == other.to_dicts()


def test_explained_days_come_from_unsuppressed_not_benign_event_alerts(tmp_path: Path) -> None:
    day = DAY - timedelta(days=1)
    flagged = pl.DataFrame({
        "event_id": ["e1", "e2", "e3", "e4", "e5"],
        "user_id": ["a", "b", "c", "d", "e"],
        "is_anomaly": [True, True, True, False, True],
        "suppressed": [False, False, True, False, False],
        "reason_kinds": [["hour", "device"], ["download_intensity"], ["session_length"], ["hour"],
                         ["session_length", "global"]],
    })
    io.write_part(flagged, tmp_path / "out", io.FLAGGED, day)
    data = tmp_path / "data"
    data.mkdir()
    (tmp_path / "verdicts.csv").write_text(f"event_id,label,analyst\n{alert_id('event', 'e5')},benign,ann\n")
    result = CliRunner().invoke(cli, ["feedback", str(tmp_path / "verdicts.csv"), "--data-dir", str(data),
                                      "--output-dir", str(tmp_path / "out")], env=ENV)
    assert result.exit_code == 0, result.output
    found = explained_days(tmp_path / "out", data, [day, DAY])  # DAY was never scored: nothing
    assert found.rows() == [("a", day, "later_hours"), ("b", day, "rising_downloads")]


def _scored_windows(frame: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """A window scored by ``_scored_window`` and, the same rows, by Polars' window functions."""
    from uba.alerting.trends import _active_today, _scored_by_polars, _scored_window

    window = _active_today(frame.lazy(), DAY)
    day_z = (pl.col("dev_downloads") / pl.col("sd_downloads")).clip(None, 3.0)
    by_polars = _scored_by_polars(window.lazy().with_columns(
        day_z.alias("_z"), (day_z - 0.75).alias("_climb"), (pl.col("dev_downloads") > 0).cast(pl.Int64).alias("_above")))
    return _scored_window(window, "dev_downloads", 3.0, 0.75).collect(), by_polars.collect()


def _random_window(rng: np.random.Generator, users: int) -> pl.DataFrame:
    """Users with 1 to 9 active days ending today, deviations over many orders of magnitude."""
    lengths = rng.integers(1, 10, users)
    rows = int(lengths.sum())
    return pl.DataFrame({
        "user_id": np.repeat([f"u{i:04d}" for i in range(users)], lengths),
        "event_date": [DAY - timedelta(days=int(back)) for n in lengths for back in range(n - 1, -1, -1)],
        "dev_downloads": rng.standard_normal(rows) * 10.0 ** rng.integers(-6, 6, rows),
        "sd_downloads": rng.uniform(0.01, 2.0, rows),
    }).sample(fraction=1.0, shuffle=True, seed=1)


def test_running_cusum_values_are_polars_window_functions_to_the_bit() -> None:
    """The CUSUM's running sums and minima and the trailing products, taken on a table of
    users x days instead of ``over("user_id")`` (15x faster on a weekday), are the same
    floats to the last bit: a signal's strength and wording depend on them."""
    fast, reference = _scored_windows(_random_window(np.random.default_rng(11), 3_000))
    assert fast.height == reference.height > 10_000
    for name in ("_c", "_cusum"):
        assert np.array_equal(fast[name].to_numpy().view(np.uint64), reference[name].to_numpy().view(np.uint64)), name
    for name in ("_in_run", "_in_excursion"):
        assert fast[name].to_list() == reference[name].to_list(), name


def test_a_window_with_nan_or_null_deviations_is_scored_by_polars_window_functions() -> None:
    """``cum_sum`` skips nulls and ``cum_min`` orders NaN its own way: a window holding
    either is left to them, so the result is theirs, not the table's."""
    frame = _random_window(np.random.default_rng(12), 200)
    for bad in (None, float("nan")):
        odd = frame.with_columns(pl.when(pl.int_range(pl.len()) % 17 == 3).then(bad).otherwise(pl.col("dev_downloads"))
                                 .alias("dev_downloads"))
        fast, reference = _scored_windows(odd)
        assert fast.equals(reference, null_equal=True)


def _downloads_of(users: dict[str, list[int]], today: date) -> pl.LazyFrame:
    return pl.concat([_frame(values, today).with_columns(pl.lit(user).alias("user_id"))
                      for user, values in users.items()])


def test_a_recomputed_user_shrinks_toward_the_whole_population() -> None:
    """A user whose explained day is left out is judged with the population's median
    variance as the prior, as everyone else is, not the median among the few users recomputed:
    that was the user's own, smaller variance, so the signal came out stronger."""
    settings = TrendSettings()
    users = {"u": [*[1, 3] * 7, 0, 0, 0, 18, 5, 6, 6]}
    for i in range(40):  # the population: day-to-day swings of a few downloads
        swing = [1, 5, 0, 6, 2, 7, 1, 4, 0, 6, 3, 5, 1, 6]
        users[f"p{i:02d}"] = [*swing[i % 3:], *swing[:i % 3], 2, 3, 2, 3, 2, 3, 2]
    frame = _downloads_of(users, DAY)
    mine = pl.DataFrame({"user_id": ["u"], "event_date": [DAY - timedelta(days=3)], "kind": ["rising_downloads"]},
                        schema=EXPLAINED_SCHEMA)
    expected = trend_signals(without_user_days(frame, mine.select("user_id", "event_date")), DAY, settings)
    alone = trend_signals(without_user_days(frame.filter(pl.col("user_id") == "u"),
                                            mine.select("user_id", "event_date")), DAY, settings).collect()
    wanted = expected.collect().filter(pl.col("user_id") == "u").to_dicts()
    assert wanted and alone.to_dicts() != wanted, "the test needs the prior to change the user's signal"
    got = trends_without_explained(frame, DAY, settings, mine).collect().filter(pl.col("user_id") == "u")
    assert got.to_dicts() == wanted
