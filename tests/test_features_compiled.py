"""The compiled feature kernel gives the values the former Polars expressions gave.

``uba.features.compiled`` is the one definition of the event features (batch frames
through ``uba.features.events``, single API events directly). These tests compare it
with the frozen expressions (``tests/polars_features_reference.py``) on a generated,
trained world's scoring day, on that day twisted into edge cases (unknown users, an
unknown device, missing hours and weekdays, a population-only snapshot) and on a
snapshot built from no history at all: same nulls, values equal to 1e-12. The column
added since (``uba-features-7``: session length given actions) is checked against a
plain Polars expression written here (``oracle``); the frozen file is left as it was.
"""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import polars as pl
import polars_features_reference as reference
import pytest
from test_features import DAY0, FEATURES, bulk_user, event, frame, population, wide_user
from worlds import SCORE_DAY, World

from uba import io
from uba.features import POPULATION_USER, daily_aggregates, user_baselines
from uba.features.compiled import (
    CONTEXT_COLUMNS,
    FEATURE_COLUMNS,
    LINE_RANGE_SDS,
    compile_baselines,
    event_columns,
    event_row,
    feature_arrays,
    feature_values,
)
from uba.features.events import BASELINE_PREFIX, event_features, features_frame
from uba.features.pipeline import feature_major, feature_matrix

TOLERANCE = 1e-12
COMPARED = (*FEATURE_COLUMNS, *CONTEXT_COLUMNS,
            *(BASELINE_PREFIX + c for c in ("history_days", "days_active", "events_per_active_day")))


def assert_same(old: pl.DataFrame, new: pl.DataFrame) -> None:
    """Same dtypes, same nulls, values within TOLERANCE (NaN where the other is NaN)."""
    assert old.height == new.height
    for name in COMPARED:
        a, b = old[name], new[name]
        assert a.dtype == b.dtype, name
        assert (a.is_null() == b.is_null()).all(), name
        if a.dtype == pl.Boolean:
            assert a.fill_null(False).equals(b.fill_null(False)), name
            continue
        x, y = a.cast(pl.Float64).to_numpy(), b.cast(pl.Float64).to_numpy()
        assert (np.isnan(x) == np.isnan(y)).all(), name
        both = ~np.isnan(x)
        assert np.all(np.abs(x[both] - y[both]) <= TOLERANCE), name


@pytest.fixture(scope="module")
def day(serving_world: World) -> tuple[pl.DataFrame, pl.DataFrame]:
    snapshot = io.latest_baseline_snapshot(serving_world.data_dir)
    assert snapshot is not None
    return io.scan_events(serving_world.data_dir, SCORE_DAY).collect(), io.read_baseline_snapshot(snapshot[1])


def oracle(events: pl.DataFrame, snapshot: pl.DataFrame) -> pl.DataFrame:
    """The frozen expressions (``uba-features-5``) plus, written here as plain Polars, what
    ``uba-features-7`` changed: the session's log length against the user's own line of
    log length on log actions (since ``uba-features-8`` never below its value at the edge
    of the user's usual actions), in the user's residual spreads (clipped at +-10, missing
    information as 0), that expected log length (null when unknown) and the log actions
    it is read at (the session's own or the edge held), its excess beyond 4
    nats on the long side, and the strongest and total deviations taken with it in place
    of ``session_length_excess``."""
    old = reference.event_features(events.lazy(), snapshot.lazy()).collect()

    def bl(name: str) -> pl.Expr:
        return pl.col(BASELINE_PREFIX + name)

    log_duration = pl.col("session_duration_sec").cast(pl.Float64).log1p()
    log_actions = pl.col("events_in_session").cast(pl.Float64).log1p()
    def line(actions: pl.Expr) -> pl.Expr:
        return bl("mean_log_duration") + bl("slope_log_duration") * (actions - bl("mean_log_actions"))

    # uba-features-8: never below the line at the edge of the user's usual actions
    low = bl("mean_log_actions") - LINE_RANGE_SDS * bl("sd_log_actions")
    high = bl("mean_log_actions") + LINE_RANGE_SDS * bl("sd_log_actions")
    held = pl.when(log_actions < low).then(low).otherwise(log_actions)
    held = pl.when(held > high).then(high).otherwise(held)
    beyond = line(held) > line(log_actions)
    at_edge = pl.when(beyond).then(line(held)).otherwise(line(log_actions))
    read_at = pl.when(held.is_nan()).then(None).otherwise(pl.when(beyond).then(held).otherwise(log_actions))
    expected = at_edge.clip(0.0, None)
    z = ((log_duration - expected) / bl("sd_log_duration_given_actions")).fill_nan(None).fill_null(0.0) \
        .clip(-reference.Z_CLIP, reference.Z_CLIP)
    deviations = ["length_for_actions_excess",
                  *(c for c in reference.DEVIATION_COLUMNS if c != "session_length_excess")]
    return old.with_columns(length_for_actions_z=z, user_expected_log_session=expected.fill_nan(None),
                            user_expected_for_log_actions=read_at).with_columns(
        length_for_actions_excess=reference.excess_surprise(pl.col("length_for_actions_z").clip(0.0, None))
    ).with_columns(max_surprise=pl.max_horizontal(*deviations), total_surprise=pl.sum_horizontal(*deviations))


def twisted(events: pl.DataFrame) -> pl.DataFrame:
    """Every third event by a stranger, every seventh on an unknown device, every fifth
    without an hour, every eleventh with neither weekday nor timestamp."""
    i = pl.int_range(pl.len())
    return events.with_columns(
        user_id=pl.when(i % 3 == 0).then(pl.lit("stranger")).otherwise(pl.col("user_id")),
        device_type=pl.when(i % 7 == 0).then(pl.lit("tablet")).otherwise(pl.col("device_type")),
        hour_of_day=pl.when(i % 5 == 0).then(None).otherwise(pl.col("hour_of_day")),
        day_of_week=pl.when(i % 11 == 0).then(None).otherwise(pl.col("day_of_week")),
        timestamp=pl.when(i % 11 == 0).then(None).otherwise(pl.col("timestamp")),
    )


def test_kernel_equals_the_polars_expressions_on_a_generated_day(day) -> None:
    events, snapshot = day
    old = oracle(events, snapshot)
    assert_same(old, features_frame(events, compile_baselines(snapshot)))
    assert_same(old, event_features(events.lazy(), snapshot.lazy()).collect())


def test_kernel_equals_the_polars_expressions_on_edge_cases(day) -> None:
    events, snapshot = day
    odd = twisted(events)
    old = oracle(odd, snapshot)
    assert_same(old, features_frame(odd, compile_baselines(snapshot)))
    population_only = snapshot.filter(pl.col("user_id") == POPULATION_USER)
    old = oracle(events, population_only)
    assert_same(old, features_frame(events, compile_baselines(population_only)))


@pytest.mark.parametrize("history_users", [0, 3])
def test_kernel_equals_the_polars_expressions_without_history(history_users: int) -> None:
    rows = population(history_users) if history_users else []
    snapshot = user_baselines(daily_aggregates(frame(rows)), DAY0, FEATURES).collect()
    odd = frame([
        event("a", DAY0, 0, duration=0, actions=1, event_type="download", device="mobile"),
        {**event("office0", DAY0, 23, duration=7 * 24 * 3600, actions=100_000), "hour_of_day": None},
        event("office1", DAY0, 3, event_type="logout"),
    ]).collect()
    old = oracle(odd, snapshot)
    assert_same(old, features_frame(odd, compile_baselines(snapshot)))
    assert_each_event_alone_equals_the_frame(odd, compile_baselines(snapshot))


def test_kernel_equals_the_polars_expressions_where_the_line_is_held_or_falls_below_zero() -> None:
    """A steep user line held at the edge of the user's usual actions (bulk), and one
    whose edge lies below 1 action, extrapolated below 0 s (wide: the oracle's clip), for
    the frame and for each event alone."""
    rows = population(14) + bulk_user() + wide_user()
    snapshot = user_baselines(daily_aggregates(frame(rows)), DAY0 + timedelta(days=14), FEATURES).collect()
    day = DAY0 + timedelta(days=14)
    odd = frame([event(user, day, 11, actions=a, duration=s) for user in ("bulk", "wide")
                 for a, s in ((1, 0.0), (1, 5.0), (2, 0.0), (10, 1.0), (100, 10.0), (100_000, 0.0))]).collect()
    old = oracle(odd, snapshot)
    assert (old["user_expected_log_session"] == 0.0).sum() == 3  # wide: 1 and 2 actions
    bulk = old.filter(pl.col("user_id") == "bulk")["user_expected_log_session"].to_list()
    assert bulk[0] == bulk[1] == bulk[2] == bulk[3] > 0.0  # held at the edge below 100 actions
    assert_same(old, features_frame(odd, compile_baselines(snapshot)))
    assert_each_event_alone_equals_the_frame(odd, compile_baselines(snapshot))


@pytest.mark.parametrize("user", ["bulk", POPULATION_USER])
def test_an_unknown_spread_of_actions_leaves_the_expected_length_unknown(user: str) -> None:
    """A snapshot whose spread of log actions is NaN while its means and slope are known
    (``user_baselines`` never writes one: a damaged or hand-made snapshot): the edge of
    the user's usual actions is unknown, so the expected length is unknown too (NaN: no
    information, ``length_for_actions_z`` 0), as in the oracle, where Polars orders NaN
    above every number. The kernel took the plain, unheld line instead: the bulk user's 5 s,
    1-action session was 5x "longer than this user's usual for 1 action (0 s)" again
    (excess 14.6), and the frame disagreed with the oracle."""
    rows = population(14) + bulk_user()
    day = DAY0 + timedelta(days=14)
    snapshot = user_baselines(daily_aggregates(frame(rows)), day, FEATURES).collect()
    snapshot = snapshot.with_columns(sd_log_actions=pl.when(pl.col("user_id") == user).then(float("nan"))
                                     .otherwise(pl.col("sd_log_actions")))
    who = "bulk" if user == "bulk" else "stranger"
    odd = frame([event(who, day, 11, actions=a, duration=s)
                 for a, s in ((1, 5.0), (2, 5.0), (100, 10.0), (1000, 3600.0))]).collect()
    compiled = compile_baselines(snapshot)
    new = features_frame(odd, compiled)
    assert new["user_expected_log_session"].is_null().all()  # unknown (NaN in the kernel)
    assert new["length_for_actions_z"].to_list() == [0.0] * 4
    assert new["length_for_actions_excess"].to_list() == [0.0] * 4
    assert_same(oracle(odd, snapshot), new)
    assert_each_event_alone_equals_the_frame(odd, compiled)


def assert_each_event_alone_equals_the_frame(events: pl.DataFrame, compiled) -> None:
    """Each event scored alone, as one-element arrays (``/predict/batch``) and as plain
    floats (``/predict``), gets exactly the frame's values (and the sign of a zero)."""
    whole = features_frame(events, compiled)
    for i, row in enumerate(events.iter_rows(named=True)):
        hour = row["hour_of_day"] if row["hour_of_day"] is not None else (
            row["timestamp"].hour if row["timestamp"] is not None else np.nan)
        weekday = row["day_of_week"] if row["day_of_week"] is not None else (
            row["timestamp"].weekday() if row["timestamp"] is not None else np.nan)
        columns = event_columns(compiled, [row["user_id"]], [row["event_type"]], [row["device_type"]],
                                [row["session_duration_sec"]], [row["events_in_session"]], [hour], [weekday])
        one = feature_arrays(compiled, columns)
        alone = feature_values(compiled, event_row(
            compiled, row["user_id"], row["event_type"], row["device_type"], row["session_duration_sec"],
            row["events_in_session"], hour, weekday))
        for name in (*FEATURE_COLUMNS, *CONTEXT_COLUMNS):
            expected = whole[name][i]
            for got in (one[name][0], alone[name]):
                if expected is None:
                    assert np.isnan(got), name
                else:
                    assert got == expected, name
                    assert type(got) is not float or np.signbit(got) == np.signbit(expected), name


def test_one_event_at_a_time_equals_the_frame(day) -> None:
    """What the API computes for one event is what a shard computes, bit for bit."""
    events, snapshot = day
    assert_each_event_alone_equals_the_frame(twisted(events).head(60), compile_baselines(snapshot))


def test_the_shards_feature_major_stack_is_the_models_matrix(day) -> None:
    """A shard scores ``feature_major(...).T``; training and the API use ``feature_matrix``.
    Same values bit for bit, on a real day and on its edge cases."""
    events, snapshot = day
    compiled = compile_baselines(snapshot)
    for frame_ in (features_frame(events, compiled), features_frame(twisted(events), compiled)):
        stacked = feature_major(frame_, FEATURE_COLUMNS)
        assert stacked.shape == (len(FEATURE_COLUMNS), frame_.height) and stacked.flags.c_contiguous
        assert np.array_equal(stacked.T, feature_matrix(frame_, FEATURE_COLUMNS), equal_nan=True)
