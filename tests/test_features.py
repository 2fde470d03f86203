"""Daily aggregates, user baselines and event features on tiny hand-made events."""

from __future__ import annotations

import math
import random
import shutil
from datetime import UTC, date, datetime, timedelta

import numpy as np
import polars as pl
import pytest

from uba import io
from uba.features import (
    CONTEXT_COLUMNS,
    DEVIATION_COLUMNS,
    FEATURE_COLUMNS,
    FEATURE_SET_VERSION,
    POPULATION_USER,
    baselines_as_of,
    daily_aggregates,
    ensure_aggregates,
    event_features,
    user_baselines,
)
from uba.features.compiled import LINE_RANGE_SDS
from uba.features.reasons import explain
from uba.schema import EVENT_SCHEMA
from uba.settings import FeatureSettings, Settings

DAY0 = date(2026, 3, 2)  # a Monday
FEATURES = FeatureSettings()


def event(user: str, day: date, hour: int, *, event_type: str = "view", duration: float = 600.0,
          actions: int = 10, device: str = "desktop", session: str | None = None,
          eid: str | None = None) -> dict:
    ts = datetime(day.year, day.month, day.day, hour, 30, tzinfo=UTC)
    return {
        "event_id": eid or f"{user}-{day.isoformat()}-{hour}-{random.random()}",
        "user_id": user, "timestamp": ts, "event_type": event_type,
        "session_duration_sec": float(duration), "events_in_session": actions,
        "device_type": device, "hour_of_day": hour, "day_of_week": ts.weekday(),
        "session_id": session,
    }


def frame(rows: list[dict]) -> pl.LazyFrame:
    return pl.DataFrame(rows, schema=EVENT_SCHEMA).lazy()


def history(user: str, hours: list[int], days: int, start: date = DAY0, **kw) -> list[dict]:
    """``user`` active at each of ``hours`` on ``days`` consecutive days from ``start``."""
    return [event(user, start + timedelta(days=d), h, **kw) for d in range(days) for h in hours]


def baselines_from(rows: list[dict], as_of: date, features: FeatureSettings = FEATURES) -> pl.DataFrame:
    return user_baselines(daily_aggregates(frame(rows)), as_of, features).collect()


def row_of(df: pl.DataFrame, user: str) -> dict:
    return df.filter(pl.col("user_id") == user).row(0, named=True)


def circular_gap(a: float, b: float) -> float:
    d = abs(a - b) % 24
    return min(d, 24 - d)


# ---- daily aggregates ------------------------------------------------------------------


def test_daily_aggregates_are_exact_for_a_hand_made_day():
    rows = [
        event("u1", DAY0, 9, duration=100, actions=3, session="s1", event_type="login"),
        event("u1", DAY0, 9, duration=100, actions=3, session="s1", event_type="download"),
        event("u1", DAY0, 23, duration=4000, actions=50, session="s2", device="mobile"),
        event("u2", DAY0, 1, duration=0, actions=1, event_type="login"),
        event("u2", DAY0, 2, duration=30, actions=2, event_type="click"),
        event("u3", DAY0, 12, duration=60, actions=1),
    ]
    agg = daily_aggregates(frame(rows)).collect()
    assert agg["user_id"].to_list() == ["u1", "u2", "u3"]
    u1, u2, u3 = (row_of(agg, u) for u in ("u1", "u2", "u3"))
    assert u1["event_date"] == DAY0 and u1["day_of_week"] == 0
    assert (u1["n_events"], u1["n_sessions"], u1["n_downloads"]) == (3, 2, 1)
    assert (u2["n_events"], u2["n_sessions"]) == (2, 1)  # no session ids: one login
    assert u3["n_sessions"] == 1  # no id, no login: still at least one session
    assert u1["max_events_in_session"] == 50
    logs = [math.log1p(100), math.log1p(100), math.log1p(4000)]
    assert u1["sum_log_duration"] == pytest.approx(math.fsum(logs), rel=1e-15)
    assert u1["sumsq_log_duration"] == pytest.approx(math.fsum(x * x for x in logs), rel=1e-15)
    acts = [math.log1p(3), math.log1p(3), math.log1p(50)]
    assert u1["sum_log_actions"] == pytest.approx(math.fsum(acts), rel=1e-15)
    assert u1["sum_log_duration_x_actions"] == pytest.approx(
        math.fsum(d * a for d, a in zip(logs, acts, strict=True)), rel=1e-15)
    angles = [2 * math.pi * h / 24 for h in (9, 9, 23)]
    assert u1["sum_hour_cos"] == pytest.approx(math.fsum(map(math.cos, angles)), abs=1e-15)
    assert u1["sum_hour_sin"] == pytest.approx(math.fsum(map(math.sin, angles)), abs=1e-15)
    assert (u1["n_hour_09"], u1["n_hour_23"], u1["n_hour_12"]) == (2, 1, 0)
    assert sum(u1[f"n_hour_{h:02d}"] for h in range(24)) == 3
    assert (u1["n_device_desktop"], u1["n_device_mobile"]) == (2, 1)
    assert (u1["n_event_login"], u1["n_event_download"], u1["n_event_view"]) == (1, 1, 1)
    assert (u2["n_event_login"], u2["n_event_click"]) == (1, 1)


def test_aggregates_split_days_by_utc_date():
    rows = history("u1", [10], 3)
    agg = daily_aggregates(frame(rows)).collect()
    assert agg["event_date"].to_list() == [DAY0, DAY0 + timedelta(1), DAY0 + timedelta(2)]
    assert agg["day_of_week"].to_list() == [0, 1, 2]


# ---- baselines -------------------------------------------------------------------------


def test_baseline_rollup_equals_direct_computation_from_raw_events():
    rng = random.Random(7)
    rows = []
    for d in range(6):
        day = DAY0 + timedelta(days=d)
        for user in ("a", "b"):
            for _ in range(rng.randint(1, 5)):
                rows.append(event(user, day, rng.randint(0, 23), duration=rng.uniform(5, 9000),
                                  actions=rng.randint(1, 80), device=rng.choice(["desktop", "mobile"]),
                                  event_type=rng.choice(["view", "click", "download"])))
    as_of = DAY0 + timedelta(days=6)
    base = baselines_from(rows, as_of)
    raw = pl.DataFrame(rows, schema=EVENT_SCHEMA)
    for user in ("a", "b"):
        mine = raw.filter(pl.col("user_id") == user)
        got = row_of(base, user)
        dur = np.log1p(mine["session_duration_sec"].to_numpy())
        act = np.log1p(mine["events_in_session"].to_numpy().astype(float))
        hours = mine["hour_of_day"].to_numpy().astype(float) * 2 * np.pi / 24
        assert got["n_events"] == mine.height
        assert got["days_active"] == 6 and got["history_days"] == 6
        assert got["raw_mean_log_duration"] == pytest.approx(dur.mean(), rel=1e-12)
        assert got["raw_sd_log_duration"] == pytest.approx(dur.std(ddof=1), rel=1e-9)
        assert got["raw_mean_log_actions"] == pytest.approx(act.mean(), rel=1e-12)
        assert got["raw_sd_log_actions"] == pytest.approx(act.std(ddof=1), rel=1e-9)
        direct_hour = (np.arctan2(np.sin(hours).mean(), np.cos(hours).mean()) * 24 / (2 * np.pi)) % 24
        assert circular_gap(got["raw_hour_mean"], direct_hour) < 1e-9
        assert got["share_device_mobile"] == pytest.approx((mine["device_type"] == "mobile").mean())
        assert got["share_event_download"] == pytest.approx((mine["event_type"] == "download").mean())
        assert got["events_per_active_day"] == pytest.approx(mine.height / 6)
    pop = row_of(base, POPULATION_USER)
    all_dur = np.log1p(raw["session_duration_sec"].to_numpy())
    assert pop["n_events"] == raw.height
    assert pop["mean_log_duration"] == pytest.approx(all_dur.mean(), rel=1e-12)
    assert pop["raw_sd_log_duration"] == pytest.approx(all_dur.std(ddof=1), rel=1e-9)


def test_circular_hour_mean_of_23_and_1_is_midnight_with_a_small_spread():
    base = baselines_from(history("owl", [23, 1], 10), DAY0 + timedelta(days=10))
    owl = row_of(base, "owl")
    assert circular_gap(owl["raw_hour_mean"], 0.0) < 1e-9  # a linear mean would say 12:00
    expected = math.sqrt(-2 * math.log(math.cos(math.pi / 12))) * 24 / (2 * math.pi)
    assert owl["raw_hour_spread"] == pytest.approx(expected, rel=1e-9)
    assert owl["raw_hour_spread"] < 1.1


def test_shrinkage_pulls_a_one_day_user_to_the_population_and_keeps_a_long_history():
    rows = []
    for i in range(8):  # the population: 600 s sessions give or take a factor e^0.5, one a day
        rows += [event(f"p{i}", DAY0 + timedelta(days=d), 10, duration=600 * math.exp(0.5 * (-1) ** (d + i)))
                 for d in range(28)]
    rows += history("veteran", [10], 28, duration=1200)
    rows += history("newcomer", [10], 1, start=DAY0 + timedelta(days=27), duration=1200)
    base = baselines_from(rows, DAY0 + timedelta(days=28))
    pop = row_of(base, POPULATION_USER)["mean_log_duration"]
    own = math.log1p(1200)
    newcomer, veteran = row_of(base, "newcomer"), row_of(base, "veteran")
    # the same empirical prior strength k (in sessions) for both: weight = n / (n + k)
    k = 1 / newcomer["mean_weight_log_duration"] - 1
    assert 0 < k <= FEATURES.prior_strength_days * 1.0  # capped at 5 days of 1 session
    assert veteran["mean_weight_log_duration"] == pytest.approx(28 / (28 + k))
    for got, days in ((newcomer, 1), (veteran, 28)):
        wm = got["mean_weight_log_duration"]
        assert got["raw_mean_log_duration"] == pytest.approx(own, rel=1e-12)
        assert got["mean_log_duration"] == pytest.approx(wm * own + (1 - wm) * pop, rel=1e-12)
        assert got["shrink_weight"] == pytest.approx(days / (days + FEATURES.prior_strength_days))
    assert newcomer["mean_weight_log_duration"] < 0.3 and veteran["mean_weight_log_duration"] > 0.8
    assert abs(newcomer["mean_log_duration"] - pop) < 0.3 * abs(own - pop)
    assert abs(veteran["mean_log_duration"] - own) < 0.2 * abs(own - pop)
    assert newcomer["sd_log_duration"] > veteran["sd_log_duration"]  # less history, wider baseline
    assert newcomer["history_days"] == 1 and veteran["history_days"] == 28


def test_empirical_prior_is_weak_when_users_differ_a_lot():
    rows = []
    for i in range(8):  # users far apart (60 s .. 2 h) and each very regular
        rows += history(f"p{i}", [10], 28, duration=60 * 2**i)
    rows += history("newcomer", [10], 1, start=DAY0 + timedelta(days=27), duration=20000)
    newcomer = row_of(baselines_from(rows, DAY0 + timedelta(days=28)), "newcomer")
    assert newcomer["mean_weight_log_duration"] > 0.99  # one session already says a lot
    assert newcomer["mean_log_duration"] == pytest.approx(math.log1p(20000), rel=1e-2)


def test_spreads_have_floors_for_perfectly_regular_users():
    settings = FeatureSettings(min_hour_spread=1.5, min_log_spread=0.3)
    base = baselines_from(history("clock", [9], 28), DAY0 + timedelta(days=28), settings)
    clock = row_of(base, "clock")
    assert clock["raw_sd_log_duration"] == 0.0 and clock["raw_hour_spread"] == 0.0
    assert clock["sd_log_duration"] == 0.3 and clock["sd_log_actions"] == 0.3
    assert clock["hour_spread"] == 1.5


def test_baselines_use_only_days_strictly_before_as_of_within_the_lookback():
    rows = history("u", [10], 10, duration=600) + [event("u", DAY0 + timedelta(days=10), 3, duration=1e6)]
    settings = FeatureSettings(lookback_days=4)
    base = baselines_from(rows, DAY0 + timedelta(days=10), settings)
    u = row_of(base, "u")
    assert u["n_events"] == 4 and u["days_active"] == 4  # days 6..9 only; day 10 is the scored day
    assert u["raw_mean_log_duration"] == pytest.approx(math.log1p(600))


def test_empty_history_gives_only_a_population_row():
    base = baselines_from([], DAY0)
    assert base["user_id"].to_list() == [POPULATION_USER]


# ---- event features --------------------------------------------------------------------


def population(days: int = 28) -> list[dict]:
    rows = []
    for i in range(6):
        rows += history(f"office{i}", list(range(9, 17)), days, duration=900 * (i + 1), actions=10 * (i + 1))
    return rows


def features_for(events: list[dict], rows: list[dict], as_of: date) -> pl.DataFrame:
    base = user_baselines(daily_aggregates(frame(rows)), as_of, FEATURES)
    return explain(event_features(frame(events), base)).collect()


def test_session_length_is_judged_against_the_users_own_length_for_that_many_actions():
    """A user whose sessions last about a minute per action: a 40-action session of 40
    minutes is long for them but ordinary for its activity; a 10-action session of 40
    minutes is long for its activity (the long-session pattern), and only it scores on
    ``length_for_actions_excess``."""
    rng = random.Random(3)
    rows = []
    for d in range(21):
        for h in (9, 11, 13, 15):
            actions = rng.choice([5, 8, 10, 15, 20, 30, 40])
            rows.append(event("u1", DAY0 + timedelta(days=d), h, actions=actions,
                              duration=60.0 * actions * rng.uniform(0.8, 1.25)))
    rows += population(21)
    as_of = DAY0 + timedelta(days=21)
    base = row_of(baselines_from(rows, as_of), "u1")
    assert 0.8 < base["slope_log_duration"] < 1.2  # duration ~ actions, in logs
    assert base["sd_log_duration_given_actions"] < base["sd_log_duration"]
    busy = event("u1", as_of, 10, actions=40, duration=2400.0)
    slow = event("u1", as_of, 10, actions=10, duration=2400.0)
    out = features_for([busy, slow], rows, as_of)
    busy_row, slow_row = out.row(0, named=True), out.row(1, named=True)
    assert abs(busy_row["length_for_actions_z"]) < 1.0 and busy_row["length_for_actions_excess"] == 0.0
    assert slow_row["length_for_actions_z"] > 3.0 and slow_row["length_for_actions_excess"] > 0.0


def test_regression_falls_back_to_the_prior_for_days_without_the_co_moment():
    """Aggregates written before the co-moment (kept after their events were pruned)
    have no ``sum_log_duration_x_actions``: such a user gets the prior's slope and
    residual spread (their own regression is unknown), never a slope from a partial sum."""
    rows = population(10)
    as_of = DAY0 + timedelta(days=10)
    aggregates = daily_aggregates(frame(rows)).collect()
    old_day = aggregates.with_columns(
        sum_log_duration_x_actions=pl.when((pl.col("user_id") == "office0") & (pl.col("event_date") == DAY0))
        .then(None).otherwise(pl.col("sum_log_duration_x_actions")))
    base = user_baselines(old_day.lazy(), as_of, FEATURES).collect()
    office0, office1 = row_of(base, "office0"), row_of(base, "office1")
    assert office0["slope_log_duration"] == pytest.approx(office1["slope_log_duration"])  # both the prior's
    assert math.isfinite(office0["sd_log_duration_given_actions"])
    without = user_baselines(aggregates.drop("sum_log_duration_x_actions").lazy(), as_of, FEATURES).collect()
    assert without["slope_log_duration"].is_finite().all()


def test_a_user_without_the_co_moment_gets_the_prior_slope_not_one_from_partial_sums():
    """The fallback above, where it can be told apart: users whose actions vary, one of
    them ("steep") with sessions growing as actions squared. With every day's co-moment
    steep's own slope shows; with one day's missing, steep gets the prior's slope, the
    one a user with a constant action count also keeps."""
    rng = random.Random(5)
    rows = []
    for d in range(14):
        for h in (9, 12, 15):
            day = DAY0 + timedelta(days=d)
            for user, power in (("steep", 2.0), ("plain0", 1.0), ("plain1", 1.0), ("plain2", 1.0)):
                actions = rng.choice([3, 5, 8, 12, 20])
                rows.append(event(user, day, h, actions=actions, duration=30.0 * actions ** power))
            rows.append(event("constant", day, h, actions=8, duration=rng.uniform(300.0, 600.0)))
    as_of = DAY0 + timedelta(days=14)
    aggregates = daily_aggregates(frame(rows)).collect()
    full = user_baselines(aggregates.lazy(), as_of, FEATURES).collect()
    missing = aggregates.with_columns(
        sum_log_duration_x_actions=pl.when((pl.col("user_id") == "steep") & (pl.col("event_date") == DAY0))
        .then(None).otherwise(pl.col("sum_log_duration_x_actions")))
    partial = user_baselines(missing.lazy(), as_of, FEATURES).collect()
    prior = row_of(partial, "constant")["slope_log_duration"]
    assert row_of(full, "steep")["slope_log_duration"] > 1.5 > prior
    assert row_of(partial, "steep")["slope_log_duration"] == pytest.approx(prior)


@pytest.mark.parametrize("users", [1, 3])
def test_a_window_where_nobody_has_two_events_gives_finite_spreads(users: int):
    """A fresh deployment or a new peer group: each user has one event in the lookback (no
    within-user variance anywhere, and with one user one event in all). The spreads of
    session length given actions fall back to the plain ones instead of 0/0 = NaN, which
    would have silently zeroed ``length_for_actions_excess`` for everyone."""
    rows = [event(f"solo{i}", DAY0, 10, actions=5 + 10 * i, duration=300.0 * (i + 1)) for i in range(users)]
    as_of = DAY0 + timedelta(days=1)
    base = baselines_from(rows, as_of)
    spreads = base["sd_log_duration_given_actions"]
    assert spreads.is_finite().all() and (spreads >= FEATURES.min_log_spread).all(), base
    assert base["slope_log_duration"].is_finite().all()
    long_one = event("solo0", as_of, 10, actions=5, duration=300.0 * 50)
    out = features_for([long_one], rows, as_of).row(0, named=True)
    assert math.isfinite(out["length_for_actions_z"]) and out["length_for_actions_z"] > 0


def test_right_after_the_co_moment_upgrade_users_are_not_judged_by_the_few_new_ones():
    """Events kept a week, aggregates the whole lookback: after the upgrade to the co-moment
    (AGGREGATES_VERSION 2) the first week's parts are version 1, so every user of that week
    lacks it and only a newcomer whose sessions grow exactly with their actions has one.
    Replayed on the scored day, the users' own ordinary sessions must not stand out on
    length given actions any more than with every co-moment known (none does). Before,
    the newcomer's three events set everyone's slope (1.13) and residual spread (0.25,
    the floor, against plain spreads of 1.6): 124 of 336 ordinary events had
    ``length_for_actions_excess`` > 0 (on a real world, 49 of 185 ordinary events flagged
    against 0)."""
    rng = random.Random(11)
    rows = [event(f"old{i}", DAY0 + timedelta(days=d), h, actions=rng.choice([3, 5, 8, 12, 20]),
                  duration=rng.choice([60.0, 300.0, 900.0, 3600.0]))
            for d in range(14) for i in range(8) for h in (9, 12, 15)]
    newcomer = [event("newcomer", DAY0 + timedelta(days=13), h, actions=a, duration=50.0 * a)
                for h, a in ((9, 4), (12, 16), (15, 8))]
    as_of = DAY0 + timedelta(days=14)
    aggregates = daily_aggregates(frame(rows + newcomer)).collect()
    upgraded = aggregates.with_columns(sum_log_duration_x_actions=pl.when(
        pl.col("event_date") < DAY0 + timedelta(days=7)).then(None).otherwise(pl.col("sum_log_duration_x_actions")))
    replay = frame([{**r, "timestamp": datetime.combine(as_of, r["timestamp"].timetz()),
                     "day_of_week": as_of.weekday()} for r in rows])
    for window in (aggregates, upgraded):
        out = event_features(replay, user_baselines(window.lazy(), as_of, FEATURES)).collect()
        assert (out["length_for_actions_excess"] == 0.0).all(), (out["length_for_actions_excess"] > 0).sum()
    base = user_baselines(upgraded.lazy(), as_of, FEATURES).collect()
    given, plain = base["sd_log_duration_given_actions"], base["sd_log_duration"]
    assert (given > 0.9 * plain).all(), base.select("user_id", "sd_log_duration_given_actions", "sd_log_duration")


def bulk_user(days: int = 14) -> list[dict]:
    """A user of big sessions whose length grows steeply with actions (100 actions: 10 s,
    300: 150 s, 1000: 1 h): their line, extrapolated to 1 action, is far below 0 s."""
    return [event("bulk", DAY0 + timedelta(days=d), h, actions=a, duration=s)
            for d in range(days) for h, (a, s) in zip((9, 11, 14), ((100, 10.0), (300, 150.0), (1000, 3600.0)),
                                                      strict=True)]


def wide_user(days: int = 14) -> list[dict]:
    """A user whose actions span 1 to 1000 (0 s, 1 s and 1 h sessions): the edge of their
    usual actions lies below 1 action, so their own line, not held, gives a 1-action
    session an expected length below 0 s."""
    return [event("wide", DAY0 + timedelta(days=d), h, actions=a, duration=s)
            for d in range(days) for h, (a, s) in zip((9, 11, 14), ((1, 0.0), (10, 1.0), (1000, 3600.0)),
                                                      strict=True)]


def test_a_zero_second_session_is_never_long_for_its_actions():
    """The expected log length given actions is at least 0 (a 0 s session). The wide
    user's line gives -0.5 for 1 action, so a 0 s session with 1 action was 10 sigmas
    "long" (length_for_actions_excess 46, the most there is) and read "session 0.0x
    longer than this user's usual for 1 actions (0 s)"."""
    rows = population(14) + wide_user()
    as_of = DAY0 + timedelta(days=14)
    wide = row_of(baselines_from(rows, as_of), "wide")
    assert wide["mean_log_actions"] - LINE_RANGE_SDS * wide["sd_log_actions"] < math.log(2)  # no edge above 1 action
    assert wide["mean_log_duration"] + wide["slope_log_duration"] * (math.log(2) - wide["mean_log_actions"]) < 0
    probes = [event("wide", as_of, 11, actions=a, duration=0.0) for a in (1, 10, 1000)]
    out = features_for(probes, rows, as_of)
    assert out["user_expected_log_session"].to_list()[0] == 0.0
    assert out["length_for_actions_excess"].to_list() == [0.0, 0.0, 0.0]
    assert not any("longer" in reason for reasons in out["reasons"].to_list() for reason in reasons)


def line_at(base: dict, log_actions: float) -> float:
    return base["mean_log_duration"] + base["slope_log_duration"] * (log_actions - base["mean_log_actions"])


def test_a_short_session_with_fewer_actions_than_usual_is_not_long_for_them():
    """The bulk user never has fewer than 100 actions; their line, extrapolated to 1
    action, expected 0 s, so an ordinary 5 s, 1-action session read 7 sigmas long
    (length_for_actions_excess 21.7, found by an attack on uba-features-7). Since
    uba-features-8 the expected length is never below the line at the edge of the
    user's usual actions (1.5 spreads below their mean), where their sessions last
    about 7 s; a 1-minute, 1-action session is still long for them (their sessions
    follow their line within a residual spread of 0.25: widening that spread beyond the
    edge was tried and cost a real long idle session on an evaluation world)."""
    rows = population(14) + bulk_user()
    as_of = DAY0 + timedelta(days=14)
    bulk = row_of(baselines_from(rows, as_of), "bulk")
    edge = bulk["mean_log_actions"] - LINE_RANGE_SDS * bulk["sd_log_actions"]
    assert math.log(101) > edge > math.log(2)  # 1 action is outside their usual, 100 inside
    probes = [event("bulk", as_of, 11, actions=a, duration=d) for a, d in ((1, 5.0), (2, 5.0), (1, 60.0))]
    out = features_for(probes, rows, as_of)
    assert out["user_expected_log_session"].to_list() == pytest.approx([line_at(bulk, edge)] * 3, abs=1e-12)
    assert out["length_for_actions_excess"].to_list()[:2] == [0.0, 0.0]
    assert out["length_for_actions_excess"].to_list()[2] > 10.0
    reasons = out["reasons"].to_list()
    assert not any("longer" in reason for reason in reasons[0] + reasons[1]), reasons
    # the reason names the edge's count of actions, whose usual length it quotes
    said = f"longer than this user's usual for {round(math.expm1(edge))} actions (7 s); it had 1, fewer than"
    assert any(said in reason for reason in reasons[2]), reasons


def bot_user(days: int = 14) -> list[dict]:
    """A user whose sessions get shorter the more actions they hold (10 actions: 1 h,
    100: 10 min, 1000: 1 min), as a scripted client's would: a negative slope."""
    return [event("bot", DAY0 + timedelta(days=d), h, actions=a, duration=s)
            for d in range(days) for h, (a, s) in zip((9, 11, 14), ((10, 3600.0), (100, 600.0), (1000, 60.0)),
                                                      strict=True)]


def test_with_a_negative_slope_the_line_is_held_at_the_high_edge():
    """Where length falls with actions, extrapolating to many more actions than usual
    expects a session under a second, and a 5 s one with 100,000 actions read long for its actions;
    held at the high edge (1.5 spreads above the mean) it is not. Fewer actions than
    usual: the line rises there, and is kept."""
    rows = population(14) + bot_user()
    as_of = DAY0 + timedelta(days=14)
    bot = row_of(baselines_from(rows, as_of), "bot")
    assert bot["slope_log_duration"] < -0.5
    high = bot["mean_log_actions"] + LINE_RANGE_SDS * bot["sd_log_actions"]
    assert line_at(bot, math.log1p(100_000)) < math.log1p(1.0) < line_at(bot, high)  # unheld: under 1 s
    probes = [event("bot", as_of, 11, actions=a, duration=d) for a, d in ((100_000, 5.0), (1, 3600.0))]
    out = features_for(probes, rows, as_of)
    assert out["user_expected_log_session"].to_list() == pytest.approx(
        [line_at(bot, high), line_at(bot, math.log(2))], abs=1e-12)
    assert out["length_for_actions_excess"].to_list() == [0.0, 0.0]


def test_the_line_is_used_as_it_is_inside_the_usual_actions_and_where_it_rises_beyond():
    """Inside the user's usual actions the expected length is their line (the events of
    uba-features-7 keep their features); beyond the edge where the line rises (many
    actions, a positive slope) it is not held either, so a long session with as many
    more actions is not called long for its actions."""
    rows = population(14) + bulk_user()
    as_of = DAY0 + timedelta(days=14)
    bulk = row_of(baselines_from(rows, as_of), "bulk")
    high = bulk["mean_log_actions"] + LINE_RANGE_SDS * bulk["sd_log_actions"]
    assert math.log1p(5000) > high > math.log1p(300)
    probes = [event("bulk", as_of, 11, actions=a, duration=d) for a, d in ((300, 150.0), (1000, 3600.0),
                                                                            (5000, 50_000.0))]
    out = features_for(probes, rows, as_of)
    expected = [line_at(bulk, math.log1p(a)) for a in (300, 1000, 5000)]
    assert out["user_expected_log_session"].to_list() == pytest.approx(expected, abs=1e-12)
    assert out["length_for_actions_excess"].to_list() == [0.0, 0.0, 0.0]


@pytest.mark.parametrize("actions", [6, 10, 26])
def test_a_population_with_one_action_count_fits_no_slope_from_rounding(actions: int):
    """A log source that reports the same ``events_in_session`` for every session (it does
    not count activity): no line of length on actions can be fitted, so the population
    row (an unknown user's baseline) keeps slope 0, as every user's row does, and a
    stranger's ordinary session length is not called long for having fewer actions. The
    total regression's sums of squares were ``sumsq - sum**2 / n`` without the rounding
    floor ``_within_ss`` has: rounding noise, whose ratio was a slope of 4.0 or 3.0 here."""
    as_of = DAY0 + timedelta(days=14)
    rows = [event(f"u{i}", DAY0 + timedelta(days=d), h, actions=actions,
                  duration=[30.0, 600.0, 7200.0][(d + h + i) % 3])
            for i in range(3) for d in range(14) for h in (9, 12)]
    base = baselines_from(rows, as_of)
    assert (base["slope_log_duration"] == 0.0).all(), base.select("user_id", "slope_log_duration")
    stranger = event("stranger", as_of, 12, actions=1, duration=7200.0)
    out = features_for([stranger], rows, as_of).row(0, named=True)
    assert out["length_for_actions_excess"] == 0.0, out["length_for_actions_z"]


def test_feature_list_is_fixed_and_versioned():
    assert len(FEATURE_COLUMNS) == len(set(FEATURE_COLUMNS)) == 18
    assert set(DEVIATION_COLUMNS) <= set(FEATURE_COLUMNS)
    assert FEATURE_SET_VERSION
    assert not set(FEATURE_COLUMNS) & set(EVENT_SCHEMA)  # never overwrite an input column


def test_unknown_user_gets_the_population_baseline_and_known_user_false():
    rows = population(5)
    as_of = DAY0 + timedelta(days=5)
    out = features_for([event("office0", as_of, 10), event("stranger", as_of, 10)], rows, as_of)
    base = user_baselines(daily_aggregates(frame(rows)), as_of, FEATURES).collect()
    known, unknown = out.row(0, named=True), out.row(1, named=True)
    assert known["known_user"] is True and unknown["known_user"] is False
    pop = row_of(base, POPULATION_USER)
    assert unknown["user_median_session_sec"] == pytest.approx(math.exp(pop["mean_log_duration"]) - 1.0)
    assert unknown["user_usual_hour_start"] == pop["usual_hour_start"]
    assert unknown["bl_history_days"] == 0 and unknown["bl_days_active"] == 0
    assert unknown["log_history_days"] == 0.0 and known["log_history_days"] == pytest.approx(math.log1p(5))
    assert unknown["device_rarity"] == 0.0 and unknown["event_type_rarity"] == 0.0


def test_features_are_finite_floats_even_without_any_history():
    odd = [
        event("a", DAY0, 0, duration=0, actions=1, event_type="download", device="mobile"),
        {**event("b", DAY0, 23, duration=7 * 24 * 3600, actions=100_000), "hour_of_day": None},
    ]
    for rows in ([], population(3)):
        out = features_for(odd, rows, DAY0)
        assert out.height == 2
        for name in FEATURE_COLUMNS:
            col = out[name]
            assert col.dtype == pl.Float64, name
            assert col.null_count() == 0 and col.is_finite().all(), name
    assert out["event_hour"].to_list() == [0.0, 23.0]  # null hour_of_day falls back to the timestamp


def test_features_are_row_local():
    rows = population(10) + history("night", [22, 23, 0, 1, 2], 10, device="mobile")
    as_of = DAY0 + timedelta(days=10)
    probe = event("night", as_of, 14, event_type="download", duration=9000, actions=300, eid="probe")
    rng = random.Random(3)
    others = [
        event(rng.choice(["office0", "office3", "night", "nobody"]), as_of, rng.randint(0, 23),
              event_type=rng.choice(["view", "download", "login"]), duration=rng.uniform(0, 20000),
              actions=rng.randint(1, 500), device=rng.choice(["desktop", "mobile"]), eid=f"o{i}")
        for i in range(1000)
    ]
    alone = features_for([probe], rows, as_of)
    crowd = features_for(others[:400] + [probe] + others[400:], rows, as_of)
    in_crowd = crowd.filter(pl.col("event_id") == "probe")
    columns = [*FEATURE_COLUMNS, *CONTEXT_COLUMNS, "reasons", "reason_kinds"]
    assert alone.select(columns).equals(in_crowd.select(columns))
    assert crowd["event_id"].to_list()[400] == "probe"  # input order is kept


def test_off_hours_event_deviates_for_a_nine_to_five_user_but_not_for_a_night_shift_user():
    rows = population()
    rows += [r for r in history("nine2five", list(range(9, 17)), 28) if r["day_of_week"] < 5]
    rows += history("nightshift", [22, 23, 0, 1, 2, 3, 4, 5], 28)
    as_of = DAY0 + timedelta(days=28)  # a Monday
    out = features_for([event("nine2five", as_of, 3), event("nightshift", as_of, 3)], rows, as_of)
    office, night = out.row(0, named=True), out.row(1, named=True)
    assert office["hour_z"] > 3.5 and office["hour_deviation"] > 2.0
    assert office["reason_kinds"][0] == "hour"
    assert office["reasons"][0] == "03:00 is outside this user's usual 09:00-17:00"
    assert night["hour_z"] < 1.0 and night["hour_deviation"] == 0.0
    assert "hour" not in night["reason_kinds"]
    others = [c for c in DEVIATION_COLUMNS if c not in ("hour_deviation", "time_of_week_rarity")]
    assert all(office[c] == 0.0 for c in others)  # only the hour is off
    assert office["max_surprise"] == office["hour_deviation"]


def test_an_ordinary_event_has_no_deviation_at_all():
    rows = population() + history("regular", list(range(9, 17)), 28, duration=1800, actions=20)
    as_of = DAY0 + timedelta(days=28)
    out = features_for([event("regular", as_of, 13, duration=1800, actions=20)], rows, as_of)
    ordinary = out.row(0, named=True)
    assert all(ordinary[c] == 0.0 for c in DEVIATION_COLUMNS)
    assert ordinary["max_surprise"] == ordinary["total_surprise"] == ordinary["first_use"] == 0.0
    assert ordinary["reasons"] == [] and ordinary["reason_kinds"] == []


def test_first_mobile_use_and_rare_downloads_are_rare_for_the_user():
    rows = population() + history("saver", list(range(9, 17)), 28, duration=1800, actions=20)
    rows += history("hoarder", list(range(9, 17)), 28, duration=1800, actions=20, event_type="download")
    as_of = DAY0 + timedelta(days=28)
    out = features_for([
        event("saver", as_of, 10, duration=1800, actions=20, device="mobile"),
        event("saver", as_of, 11, duration=1800, actions=200, event_type="download"),
        event("hoarder", as_of, 11, duration=1800, actions=200, event_type="download"),
    ], rows, as_of)
    mobile, saver_dl, hoarder_dl = (out.row(i, named=True) for i in range(3))
    assert mobile["device_rarity_nats"] > 1.0 and mobile["reason_kinds"][0] == "device"
    assert mobile["reasons"][0] == "first mobile use for this user"
    assert 0.5 < mobile["first_use"] < 1.0  # 28 sessions of desktop only
    assert saver_dl["first_use"] > 0.5 and hoarder_dl["first_use"] == 0.0
    assert saver_dl["download_intensity"] > 3.0
    assert saver_dl["reason_kinds"][0] == "download_intensity"
    assert saver_dl["reasons"][0].startswith("first download for this user, in a session of 200 actions")
    assert hoarder_dl["download_intensity"] == 0.0
    assert "download_intensity" not in hoarder_dl["reason_kinds"]


# ---- storage: aggregates partitions and baselines_as_of --------------------------------


def write_events(data_dir, rows: list[dict]) -> None:
    df = pl.DataFrame(rows, schema=EVENT_SCHEMA)
    for (day,), part in df.group_by(pl.col("timestamp").dt.date(), maintain_order=True):
        io.write_part(part, data_dir, io.EVENTS, day)


def test_baselines_as_of_reads_only_aggregates_and_nothing_on_or_after_as_of(tmp_path):
    settings = Settings(features=FeatureSettings(lookback_days=3))
    as_of = DAY0 + timedelta(days=5)
    rows = history("u", [10], 5, duration=600) + history("v", [11], 5, duration=60)
    rows += [event("u", as_of, 3, duration=1e6), event("late", as_of + timedelta(1), 3)]
    write_events(tmp_path, rows)
    days = [DAY0 + timedelta(days=d) for d in range(8)]
    assert ensure_aggregates(tmp_path, days, settings.events) == days[:7]  # day 7 has no events
    assert ensure_aggregates(tmp_path, days, settings.events) == []  # already up to date

    shutil.move(tmp_path / io.EVENTS, tmp_path / "events-moved-away")  # raw events are gone
    got = baselines_as_of(tmp_path, as_of, settings).collect()
    shutil.move(tmp_path / "events-moved-away", tmp_path / io.EVENTS)

    expected = baselines_from([r for r in rows if r["timestamp"].date() < as_of], as_of,
                              settings.features)
    assert got.equals(expected)
    assert set(got["user_id"]) == {"u", "v", POPULATION_USER}  # "late" is after as_of
    assert row_of(got, "u")["n_events"] == 3  # lookback 3: days 2..4, not the 1e6 s session of as_of
    assert row_of(got, "u")["raw_mean_log_duration"] == pytest.approx(math.log1p(600))


def test_aggregates_are_recomputed_when_a_day_gets_more_events(tmp_path):
    write_events(tmp_path, history("u", [10], 1))
    assert ensure_aggregates(tmp_path, [DAY0]) == [DAY0]
    write_events(tmp_path, [event("u", DAY0, 12)])  # a later ingest adds a part
    assert ensure_aggregates(tmp_path, [DAY0]) == [DAY0]
    agg = io.scan_aggregates(tmp_path, [DAY0]).collect()
    assert agg["n_events"].to_list() == [2] and agg["event_date"].to_list() == [DAY0]
    assert len(io.partition_files(tmp_path, io.AGGREGATES, DAY0)) == 1


def test_baseline_snapshot_round_trip(tmp_path):
    settings = Settings()
    assert io.latest_baseline_snapshot(tmp_path) is None
    base = baselines_as_of(tmp_path, DAY0, settings).collect()  # no aggregates at all
    assert base["user_id"].to_list() == [POPULATION_USER]
    for as_of in (DAY0, DAY0 + timedelta(days=1)):
        io.write_baseline_snapshot(base, tmp_path, as_of)
    as_of, path = io.latest_baseline_snapshot(tmp_path)
    assert as_of == DAY0 + timedelta(days=1)
    assert path == tmp_path / "baselines" / "as_of=2026-03-03" / "baselines.parquet"
    assert io.read_baseline_snapshot(path).equals(base)


def test_a_snapshot_encoded_ahead_is_the_file_the_frame_gives(tmp_path):
    """``score --date`` encodes the snapshot in a thread (``io.parquet_bytes``) and writes the
    bytes when the run succeeded: the file must be the one writing the frame gives, byte
    for byte (the API and the outputs' checks read it)."""
    rows = history("day", [9, 10, 11], 5) + history("night", [22, 23, 1], 4, device="mobile")
    frame = baselines_from(rows, DAY0 + timedelta(days=5))
    direct = io.write_baseline_snapshot(frame, tmp_path / "direct", DAY0).read_bytes()
    ahead = io.write_baseline_snapshot(io.parquet_bytes(frame), tmp_path / "ahead", DAY0).read_bytes()
    assert ahead == direct and io.read_baseline_snapshot(tmp_path / "ahead" / "baselines" / "as_of=2026-03-02"
                                                         / "baselines.parquet").equals(frame)


@pytest.mark.integration  # a real subprocess, server or seconds of work
def test_two_runs_writing_the_same_new_aggregates_day_both_succeed(tmp_path) -> None:
    """Runs of different dates share lookback days: the second to publish a fresh
    aggregates partition must replace the first's, not fail with 'Directory not empty'."""
    import threading

    frame = pl.DataFrame({"user_id": ["u1"], "n_events": [3]})
    errors: list[BaseException] = []
    for trial in range(60):
        root = tmp_path / f"t{trial}"
        barrier = threading.Barrier(2)

        def publish(root=root, barrier=barrier) -> None:
            barrier.wait()
            try:
                io.write_aggregates(frame, root, DAY0, "tag")
            except BaseException as exc:  # noqa: BLE001 - collected and asserted below
                errors.append(exc)

        threads = [threading.Thread(target=publish) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert io.aggregates_tag(root, DAY0) == "tag"
    assert errors == []


def _usual_hours_every_length(counts: np.ndarray, n_events: np.ndarray) -> tuple[list, list]:
    """``usual_hours`` as first written: every row through all 24 window lengths."""
    rows, hours = counts.shape
    prefix = np.zeros((rows, 2 * hours + 1), dtype=np.int64)
    np.cumsum(np.concatenate([counts, counts], axis=1), axis=1, out=prefix[:, 1:])
    need = n_events * 0.9 - 1e-9
    length, start = np.zeros(rows, dtype=np.int64), np.zeros(rows, dtype=np.int64)
    open_rows = ~np.isnan(need)
    for k in range(1, hours + 1):
        covered = prefix[:, k:k + hours] - prefix[:, :hours]
        hit = open_rows & (covered.max(axis=1).astype(np.float64) >= need)
        length[hit], start[hit] = k, covered[hit].argmax(axis=1)
        open_rows &= ~hit
    return ([None if n == 0 else int(n) for n in length],
            [None if n == 0 else int(s) for n, s in zip(length, start, strict=True)])


def test_usual_hours_settle_each_row_as_passing_every_row_through_every_length_did() -> None:
    """Rows leave the search once their window is found; lengths, starts (ties: the window
    covering most, earliest first) and nulls stay those of the full 24 passes."""
    from uba.features.baselines import usual_hours

    rng = np.random.default_rng(5)
    counts = np.concatenate([
        rng.integers(0, 6, (400, 24)),                                   # spread out
        (rng.random((400, 24)) < 0.15) * rng.integers(0, 90, (400, 24)),  # a few busy hours
        np.zeros((20, 24), dtype=np.int64), np.full((20, 24), 3),         # nothing; perfectly flat
    ]).astype(np.int64)
    n_events = counts.sum(axis=1).astype(np.float64)
    n_events[::7] *= rng.uniform(0.2, 1.3, len(n_events[::7]))  # totals that do not match the hours
    n_events[::11] = np.nan
    length, start = usual_hours(counts, n_events)
    assert (length.to_list(), start.to_list()) == _usual_hours_every_length(counts, n_events)
    assert length.null_count() > 0 and length.max() >= 20  # short and long windows both searched
