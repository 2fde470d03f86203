"""FROZEN ORACLE, not product code: the Polars expressions that defined the event
features until the compiled feature kernel (``uba/features/events.py`` as of b6c4c58).

The product computes features once, in ``uba.features.compiled`` (array arithmetic over a
compiled snapshot). This copy exists only so ``tests/test_features_compiled.py`` can prove
the kernel gives the values the expressions gave (the bundles trained before it were
fitted on them). Do not import it from ``uba``; do not change it.
"""

from __future__ import annotations

import math

import polars as pl

from uba.features.aggregates import DOWNLOAD, HOURS, WEEKDAYS, categories_in
from uba.features.baselines import (
    POPULATION_USER,
    hour_label,
    rarity_col,
    share_col,
)

FEATURE_SET_VERSION = "uba-features-5"

# Deviation features, all surprises in nats (0 = as expected for this user).
DEVIATION_COLUMNS: tuple[str, ...] = (
    "session_length_excess",
    "actions_excess",
    "hour_deviation",
    "device_rarity",
    "event_type_rarity",
    "download_intensity",
    "time_of_week_rarity",
)

FEATURE_COLUMNS: tuple[str, ...] = (
    # the seed's event-level fields
    "log_session_duration",
    "log_events_in_session",
    "event_hour",
    "event_weekday",
    "event_type_code",
    "device_code",
    # deviations from the user's own baseline
    *DEVIATION_COLUMNS,
    "first_use",
    # the strongest and the sum of the deviations above, so a one-feature anomaly is
    # extreme in more than one dimension the forest may pick
    "max_surprise",
    "total_surprise",
    # how much history backs the baseline
    "log_history_days",
)


# Context the reasons quote; kept next to the features in scored output.
CONTEXT_COLUMNS: tuple[str, ...] = (
    "known_user",
    "session_length_z",
    "actions_z",
    "hour_z",
    "device_rarity_nats",
    "event_type_rarity_nats",
    "download_surprise",
    "user_median_session_sec",
    "user_median_actions",
    "user_usual_hour_start",
    "user_usual_hour_end",
    "user_device_share",
    "user_event_type_share",
    "user_download_share",
    "user_weekday_share",
    "hour_rarity",
    "weekday_rarity",
    "global_extremity",
    "global_by_actions",
)

_FLOAT_CONTEXT = (
    "user_median_session_sec", "user_median_actions", "user_device_share",
    "user_event_type_share", "user_download_share", "user_weekday_share",
)

Z_CLIP = 10.0
NOISE_NATS = 4.0  # z-type deviations count from z ~ 2.8 (0.25% one-sided) upward
RARITY_NOISE_NATS = 2.0  # categories count from e^2 ~ 7.4x rarer than for the population
# a download by a user who downloads 3x less than the population, counted from 1 nat: the
# evidence of a spree is split over its rows (row-local), so each row's share is small
DOWNLOAD_NOISE_NATS = 1.0
RARITY_CLIP = 12.0
HOUR_DEVIATION_CLIP = 12.0
BASELINE_PREFIX = "bl_"


def bl(name: str) -> pl.Expr:
    """A column of the attached user baseline."""
    return pl.col(BASELINE_PREFIX + name)


def attach_baselines(events: pl.LazyFrame, baselines: pl.LazyFrame) -> pl.LazyFrame:
    """Left-join every event to its user's baseline row (``bl_*`` columns), in input order.

    Users without a row get the ``POPULATION_USER`` row and ``known_user = False``;
    their history is 0 days. Baseline user ids must be unique (checked by the join).
    """
    user_key = pl.col("user_id").cast(pl.String)
    known = (
        baselines.select(pl.col("user_id").cast(pl.String).alias("_user_key"))
        .filter(pl.col("_user_key") != POPULATION_USER)
        .with_columns(_known=pl.lit(True))
    )
    names = [c for c in baselines.collect_schema() if c != "user_id"]
    rows = baselines.select(
        pl.col("user_id").cast(pl.String).alias("_baseline_key"),
        *(pl.col(c).alias(BASELINE_PREFIX + c) for c in names),
    )
    with_key = events.with_columns(_user_key=user_key).join(
        known, on="_user_key", how="left", validate="m:1", maintain_order="left"
    ).with_columns(known_user=pl.col("_known").fill_null(False))
    with_key = with_key.with_columns(
        _baseline_key=pl.when(pl.col("known_user")).then(pl.col("_user_key"))
        .otherwise(pl.lit(POPULATION_USER))
    )
    joined = with_key.join(
        rows, on="_baseline_key", how="left", validate="m:1", maintain_order="left"
    ).drop("_user_key", "_known", "_baseline_key")
    unknown_history = {
        BASELINE_PREFIX + c: pl.when(pl.col("known_user")).then(bl(c)).otherwise(0)
        for c in ("history_days", "days_active") if c in names
    }
    return joined.with_columns(**unknown_history)


def _pick(column: str, cases: list[tuple[str, str]], default: pl.Expr) -> pl.Expr:
    """Value of the baseline column matching this event's category (row-local lookup)."""
    expr = default
    for value, name in reversed(cases):
        expr = pl.when(pl.col(column).cast(pl.String) == value).then(bl(name)).otherwise(expr)
    return expr


def _pick_int(column: str, cases: list[tuple[int, str]], default: pl.Expr) -> pl.Expr:
    expr = default
    for value, name in reversed(cases):
        expr = pl.when(pl.col(column).cast(pl.Int64) == value).then(bl(name)).otherwise(expr)
    return expr


def _code(column: str, names: list[str]) -> pl.Expr:
    """Position of the category in config order (unknown -> len(names)), as the seed encoded it."""
    expr: pl.Expr = pl.lit(float(len(names)))
    for index, value in reversed(list(enumerate(names))):
        expr = pl.when(pl.col(column).cast(pl.String) == value).then(float(index)).otherwise(expr)
    return expr


def _categories(schema: pl.Schema) -> tuple[list[str], list[str]]:
    devices = categories_in(schema, BASELINE_PREFIX + "rarity_device_")
    events = categories_in(schema, BASELINE_PREFIX + "rarity_event_")
    return devices, events


def _hour(schema: pl.Schema) -> pl.Expr:
    hour = pl.col("hour_of_day").cast(pl.Float64)
    if "timestamp" in schema:
        hour = pl.coalesce(hour, pl.col("timestamp").dt.hour().cast(pl.Float64))
    return hour


def _weekday(schema: pl.Schema) -> pl.Expr:
    day = pl.col("day_of_week").cast(pl.Float64)
    if "timestamp" in schema:
        day = pl.coalesce(day, (pl.col("timestamp").dt.weekday() - 1).cast(pl.Float64))
    return day


def _finite(expr: pl.Expr, low: float, high: float) -> pl.Expr:
    """Missing baseline information counts as "no deviation"; the result is always finite."""
    return expr.cast(pl.Float64).fill_nan(None).fill_null(0.0).clip(low, high)


def _circular_distance(hour: pl.Expr, center: pl.Expr) -> pl.Expr:
    diff = (hour - center).abs() % 24.0
    return pl.min_horizontal(diff, 24.0 - diff)


def _base_columns(schema: pl.Schema) -> list[pl.Expr]:
    """Inputs reused by several features (dropped at the end)."""
    return [
        pl.col("session_duration_sec").cast(pl.Float64).log1p().alias("_log_duration"),
        pl.col("events_in_session").cast(pl.Float64).log1p().alias("_log_actions"),
        _hour(schema).alias("_hour"),
        _weekday(schema).alias("_weekday"),
    ]


def _hour_and_weekday_rarity() -> list[pl.Expr]:
    hour_cases = [(h, rarity_col("hour", hour_label(h))) for h in HOURS]
    dow_cases = [(d, rarity_col("dow", d)) for d in WEEKDAYS]
    return [
        _pick_int("_hour_int", hour_cases, bl("unseen_rarity_hour")).alias("hour_rarity"),
        _pick_int("_weekday_int", dow_cases, bl("unseen_rarity_dow")).alias("weekday_rarity"),
    ]


def surprise(z: pl.Expr) -> pl.Expr:
    """Gaussian surprise z^2/2 in nats: the common unit of every deviation feature."""
    return z * z / 2.0


def beyond(nats: pl.Expr, noise: float) -> pl.Expr:
    """The part of a surprise above its noise level; ordinary wobble becomes exactly 0.

    A forest spends splits on whatever varies; folding every user's everyday variation
    into a single point at 0 leaves it nothing to isolate there, so its splits go to the
    deviations that matter (see docs/features.md for the measured effect).
    """
    return (nats - noise).clip(0.0, None)


def excess_surprise(z: pl.Expr) -> pl.Expr:
    """Gaussian surprise beyond NOISE_NATS (z beyond ~2.8)."""
    return beyond(surprise(z), NOISE_NATS)


def _z(value: str, stat: str) -> pl.Expr:
    """Signed z against the user's own mean and spread (log space), clipped."""
    return _finite((pl.col(value) - bl(f"mean_{stat}")) / bl(f"sd_{stat}"), -Z_CLIP, Z_CLIP)


def _population_z(value: str, stat: str) -> pl.Expr:
    return _finite((pl.col(value) - bl(f"pop_mean_{stat}")) / bl(f"pop_sd_{stat}").clip(1e-6, None),
                   0.0, Z_CLIP)


def _global_extremity() -> list[pl.Expr]:
    """Largest one-sided z against the whole population (for "extreme for anyone" reasons)."""
    length_z = _population_z("_log_duration", "log_duration")
    actions_z = _population_z("_log_actions", "log_actions")
    return [
        pl.max_horizontal(length_z, actions_z).alias("global_extremity"),
        (actions_z > length_z).alias("global_by_actions"),
    ]


def _deviations(devices: list[str], events: list[str]) -> list[pl.Expr]:
    """z-scores and rarities of the event against its user's baseline (features and context)."""
    device_cases = [(d, rarity_col("device", d)) for d in devices]
    event_cases = [(e, rarity_col("event", e)) for e in events]
    is_download = (pl.col("event_type").cast(pl.String) == DOWNLOAD).cast(pl.Float64)
    download_rarity = bl(rarity_col("event", DOWNLOAD)) if DOWNLOAD in events else pl.lit(0.0)
    hour_z = _circular_distance(pl.col("_hour"), bl("hour_mean")) / bl("hour_spread")
    return [
        _z("_log_duration", "log_duration").alias("session_length_z"),
        _z("_log_actions", "log_actions").alias("actions_z"),
        _finite(hour_z, 0.0, HOUR_DEVIATION_CLIP).alias("hour_z"),
        _finite(_pick("device_type", device_cases, bl("unseen_rarity_device")), 0.0, RARITY_CLIP)
        .alias("device_rarity_nats"),
        _finite(_pick("event_type", event_cases, bl("unseen_rarity_event")), 0.0, RARITY_CLIP)
        .alias("event_type_rarity_nats"),
        (is_download * _finite(download_rarity, 0.0, RARITY_CLIP)).alias("_download_rarity"),
        _first_use(devices, events).alias("first_use"),
    ]


def _first_use(devices: list[str], events: list[str]) -> pl.Expr:
    """Known user, device or event type never seen before: 1 each, weighted by how
    established the habit is (``n / (n + prior)``, n = the user's sessions or events)."""
    def never(column: str, kind: str, names: list[str], evidence: str) -> pl.Expr:
        share = _pick(column, [(x, share_col(kind, x)) for x in names], pl.lit(0.0))
        seen = bl(evidence).cast(pl.Float64)
        weight = seen / (seen + bl(f"share_prior_{kind}"))
        return pl.when(pl.col("known_user") & (share.fill_null(0.0) <= 0.0)).then(weight).otherwise(0.0)

    total = never("device_type", "device", devices, "n_sessions")
    total = total + never("event_type", "event", events, "n_events")
    return _finite(total, 0.0, 2.0)


def _features(events: list[str]) -> list[pl.Expr]:
    return [
        _finite(pl.col("_log_duration"), 0.0, math.inf).alias("log_session_duration"),
        _finite(pl.col("_log_actions"), 0.0, math.inf).alias("log_events_in_session"),
        _finite(pl.col("_hour"), 0.0, 23.0).alias("event_hour"),
        _finite(pl.col("_weekday"), 0.0, 6.0).alias("event_weekday"),
        excess_surprise(pl.col("session_length_z").clip(0.0, None)).alias("session_length_excess"),
        excess_surprise(pl.col("actions_z").clip(0.0, None)).alias("actions_excess"),
        excess_surprise(pl.col("hour_z")).alias("hour_deviation"),
        beyond(pl.col("device_rarity_nats"), RARITY_NOISE_NATS).alias("device_rarity"),
        beyond(pl.col("event_type_rarity_nats"), RARITY_NOISE_NATS).alias("event_type_rarity"),
        beyond(pl.col("weekday_rarity"), RARITY_NOISE_NATS).alias("time_of_week_rarity"),
        _finite(bl("history_days").cast(pl.Float64).log1p(), 0.0, math.inf).alias("log_history_days"),
    ]


def _context(devices: list[str], events: list[str]) -> list[pl.Expr]:
    """Plain quantities the reasons quote (user's median session, usual hours, shares)."""
    dow_cases = [(d, share_col("dow", d)) for d in WEEKDAYS]
    start = bl("usual_hour_start").cast(pl.Int64)
    download_share = bl(share_col("event", DOWNLOAD)) if DOWNLOAD in events else pl.lit(None)
    return [
        bl("mean_log_duration").exp().sub(1.0).clip(0.0, None).alias("user_median_session_sec"),
        bl("mean_log_actions").exp().sub(1.0).clip(0.0, None).alias("user_median_actions"),
        start.alias("user_usual_hour_start"),
        ((start + bl("usual_hour_length").cast(pl.Int64)) % 24).alias("user_usual_hour_end"),
        _pick("device_type", [(d, share_col("device", d)) for d in devices], pl.lit(0.0))
        .alias("user_device_share"),
        _pick("event_type", [(e, share_col("event", e)) for e in events], pl.lit(0.0))
        .alias("user_event_type_share"),
        download_share.cast(pl.Float64).alias("user_download_share"),
        _pick_int("_weekday_int", dow_cases, pl.lit(0.0)).alias("user_weekday_share"),
        *_global_extremity(),
    ]


def compute_features(frame: pl.LazyFrame) -> pl.LazyFrame:
    """Add FEATURE_COLUMNS (Float64, finite, no nulls) and CONTEXT_COLUMNS to attached events.

    Expression-only and row-local, so it gives the same values on a one-row frame the
    API built as on a day of events. ``frame`` must carry the ``bl_*`` columns of
    ``attach_baselines`` (categories are read from their names).
    """
    schema = frame.collect_schema()
    devices, events = _categories(schema)
    staged = frame.with_columns(_base_columns(schema)).with_columns(
        _hour_int=pl.col("_hour").cast(pl.Int64),
        _weekday_int=pl.col("_weekday").cast(pl.Int64),
        event_type_code=_finite(_code("event_type", events), 0.0, len(events)),
        device_code=_finite(_code("device_type", devices), 0.0, len(devices)),
    ).with_columns(_hour_and_weekday_rarity())
    staged = staged.with_columns(_deviations(devices, events)).with_columns(_features(events))
    staged = staged.with_columns(
        download_surprise=pl.when(pl.col("_download_rarity") > 0)
        .then(pl.col("_download_rarity") + surprise(pl.col("actions_z").clip(0.0, None)))
        .otherwise(0.0),
    ).with_columns(
        download_intensity=beyond(pl.col("download_surprise"), DOWNLOAD_NOISE_NATS),
    ).with_columns(
        max_surprise=pl.max_horizontal(*DEVIATION_COLUMNS),
        total_surprise=pl.sum_horizontal(*DEVIATION_COLUMNS),
    )
    staged = staged.with_columns(_context(devices, events)).with_columns(
        pl.col(c).fill_nan(None) for c in _FLOAT_CONTEXT
    )
    scratch = ["_log_duration", "_log_actions", "_hour", "_weekday", "_hour_int",
               "_weekday_int", "_download_rarity"]
    return staged.drop(scratch)


def event_features(events: pl.LazyFrame, baselines: pl.LazyFrame) -> pl.LazyFrame:
    """Events (EVENT_SCHEMA) + baselines (``user_baselines``) -> events with features."""
    return compute_features(attach_baselines(events, baselines))
