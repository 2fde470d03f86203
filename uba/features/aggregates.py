"""Daily per-user aggregates: the sufficient statistics every baseline is rolled up from.

A baseline for date D needs weeks of history; re-scanning weeks of raw events every
night would make scoring cost grow with the lookback. Instead each day's events are
reduced once to one small row per (user, day) holding counts and sums that add up
across days (sums and sums of squares, circular hour sums, category counts), so a
baseline is a cheap sum over at most ``lookback_days`` of these rows.

Float sums are computed in fixed point (``exact_sum``) so they do not depend on the
order in which the engine happens to add rows: reruns are byte-identical.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import TYPE_CHECKING, Protocol, cast

import polars as pl

from uba.schema import EVENT_SCHEMA

if TYPE_CHECKING:
    from uba.settings import Settings

# "2": the duration x actions co-moment (``sum_log_duration_x_actions``); parts of
# version 1 are recomputed from their day's events (the tag names the version).
# "3": hours counted from the timestamp (``io.scan_events``), not from a stored
# ``hour_of_day`` that another tool's part may have written in local time; parts of
# version 2 built from such a part would otherwise keep its shifted hours for good.
AGGREGATES_VERSION = "3"
DOWNLOAD = "download"
LOGIN = "login"
HOURS: tuple[int, ...] = tuple(range(24))
WEEKDAYS: tuple[int, ...] = tuple(range(7))
HOUR_RADIANS = 2.0 * math.pi / 24.0

# Fixed-point scale of the order-independent sums: 2**-60 resolution, so every float of
# magnitude >= 2**-7 converts exactly and the Int128 accumulator (room for ~1e17 values of
# size 1e3) holds the exact sum; it is rounded to Float64 once at the end.
_FIXED_POINT = float(2**60)

CROSS_COLUMN = "sum_log_duration_x_actions"
FLOAT_SUM_COLUMNS: tuple[str, ...] = (
    "sum_log_duration",
    "sumsq_log_duration",
    "sum_log_actions",
    "sumsq_log_actions",
    CROSS_COLUMN,
    "sum_hour_cos",
    "sum_hour_sin",
)


def hour_col(hour: int) -> str:
    return f"n_hour_{hour:02d}"


def device_col(name: str) -> str:
    return f"n_device_{name}"


def event_col(name: str) -> str:
    return f"n_event_{name}"


def categories_in(columns: Iterable[str], prefix: str) -> list[str]:
    """Category names encoded in column names, in column order.

    Later stages read the categories back from the columns instead of from config, so
    a baseline snapshot is self-describing and the API needs nothing else to use it.
    """
    return [c[len(prefix):] for c in columns if c.startswith(prefix)]


def exact_sum(expr: pl.Expr) -> pl.Expr:
    """Order-independent sum of a float expression (fixed point in Int128, back to Float64).

    A float sum depends on the order of additions, which a parallel or streaming
    engine does not fix; integer sums are exact, so the result is the same on every run
    (and is the correctly rounded sum, which also keeps variances from sums of squares
    accurate).
    """
    return from_fixed_point(fixed_point(expr).sum())


def fixed_point(expr: pl.Expr) -> pl.Expr:
    """A float expression as the Int128 fixed-point terms ``exact_sum`` adds up: computed
    before a group_by (an elementwise column), its plain ``.sum()`` in the aggregation
    costs a third of the whole expression's there (see ``from_fixed_point``)."""
    return (expr * _FIXED_POINT).round().cast(pl.Int128)


def from_fixed_point(total: pl.Expr) -> pl.Expr:
    """A sum of ``fixed_point`` terms back to Float64, rounded once: with ``fixed_point``,
    exactly ``exact_sum``."""
    return total.cast(pl.Float64) / _FIXED_POINT


def _event_date(schema: pl.Schema) -> pl.Expr:
    if "event_date" in schema:
        return pl.col("event_date").cast(pl.Date)
    return pl.col("timestamp").dt.date()


def _hour(schema: pl.Schema) -> pl.Expr:
    hour = pl.col("hour_of_day").cast(pl.Int64)
    if "timestamp" in schema:
        hour = pl.coalesce(hour, pl.col("timestamp").dt.hour().cast(pl.Int64))
    return hour


def _session_count() -> pl.Expr:
    """Distinct sessions; without session ids each login starts one (at least one per day)."""
    no_id = pl.col("session_id").is_null()
    with_ids = pl.col("session_id").drop_nulls().n_unique().cast(pl.Int64)
    from_logins = (no_id & (pl.col("event_type") == LOGIN)).sum().cast(pl.Int64)
    return pl.max_horizontal(with_ids + from_logins, pl.lit(1, pl.Int64))


class Categories(Protocol):
    """The device and event types to count: the settings' events section, or the plain
    names a Ray task receives (``uba.scoring.context.CategoryNames``)."""

    @property
    def device_types(self) -> tuple[str, ...]: ...

    @property
    def event_types(self) -> tuple[str, ...]: ...


def categories_of(categories: Categories | Settings | None) -> Categories:
    """``categories`` as given, the events section of whole settings, or the defaults.

    Only the defaults import the settings module (and pydantic), in the function: a
    shard worker imports this module and never needs pydantic, and the aggregates task
    a worker runs is given plain names."""
    if categories is None:
        from uba.settings import EventSettings

        return EventSettings()
    events = getattr(categories, "events", None)  # whole settings: their events section
    return cast("Categories", categories if events is None else events)


def _count_where(condition: pl.Expr, name: str) -> pl.Expr:
    return condition.sum().cast(pl.Int64).alias(name)


def aggregate_columns(categories: Categories | None = None) -> list[str]:
    """Column names of ``daily_aggregates`` output, in order (for empty frames and checks)."""
    cats = categories_of(categories)
    return [
        "user_id", "event_date", "day_of_week", "n_events", "n_sessions", "n_downloads",
        "max_events_in_session", *FLOAT_SUM_COLUMNS,
        *(hour_col(h) for h in HOURS),
        *(device_col(d) for d in cats.device_types),
        *(event_col(e) for e in cats.event_types),
    ]


def daily_aggregates(
    events: pl.LazyFrame, categories: Categories | None = None
) -> pl.LazyFrame:
    """One row per (user_id, event_date) of additive statistics of that user's day.

    ``events`` is in ``uba.schema.EVENT_SCHEMA``; ``event_date`` is taken from the
    column when present (Hive scans) else from the UTC timestamp. ``categories``
    gives the device and event types to count (config order; default settings).

    Session length and action counts enter in log space (``log1p``) because they are
    heavy-tailed and users differ multiplicatively; statistics are event-weighted,
    matching the per-event scoring they are compared with.
    """
    cats = categories_of(categories)
    schema = events.collect_schema()
    prepared = events.with_columns(
        event_date=_event_date(schema),
        _hour=_hour(schema),
        _log_duration=pl.col("session_duration_sec").cast(pl.Float64).log1p(),
        _log_actions=pl.col("events_in_session").cast(pl.Float64).log1p(),
    ).with_columns(_angle=pl.col("_hour").cast(pl.Float64) * HOUR_RADIANS)
    aggs = [
        pl.len().cast(pl.Int64).alias("n_events"),
        _session_count().alias("n_sessions"),
        _count_where(pl.col("event_type") == DOWNLOAD, "n_downloads"),
        pl.col("events_in_session").max().cast(pl.Int64).alias("max_events_in_session"),
        exact_sum(pl.col("_log_duration")).alias("sum_log_duration"),
        exact_sum(pl.col("_log_duration") ** 2).alias("sumsq_log_duration"),
        exact_sum(pl.col("_log_actions")).alias("sum_log_actions"),
        exact_sum(pl.col("_log_actions") ** 2).alias("sumsq_log_actions"),
        exact_sum(pl.col("_log_duration") * pl.col("_log_actions")).alias("sum_log_duration_x_actions"),
        exact_sum(pl.col("_angle").cos()).alias("sum_hour_cos"),
        exact_sum(pl.col("_angle").sin()).alias("sum_hour_sin"),
        *(_count_where(pl.col("_hour") == h, hour_col(h)) for h in HOURS),
        *(_count_where(pl.col("device_type") == d, device_col(d)) for d in cats.device_types),
        *(_count_where(pl.col("event_type") == e, event_col(e)) for e in cats.event_types),
    ]
    return (
        prepared.group_by("user_id", "event_date")
        .agg(aggs)
        .with_columns(day_of_week=(pl.col("event_date").dt.weekday() - 1).cast(pl.Int8))
        .select(aggregate_columns(cats))
        .sort("event_date", "user_id")
    )


def empty_aggregates(categories: Categories | None = None) -> pl.LazyFrame:
    """A zero-row aggregates frame with the full schema (a day or window with no data)."""
    return daily_aggregates(pl.LazyFrame(schema=EVENT_SCHEMA), categories)
