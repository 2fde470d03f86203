"""Event features: each event's own fields and how far it sits from its user's baseline.

The one feature function of the product is ``uba.features.compiled.feature_arrays``
(array arithmetic over a baseline snapshot compiled once into per-user arrays). This
module is its frame adapter: training, batch scoring and evaluation call
``event_features`` (LazyFrame in, LazyFrame out) or ``features_frame`` (a shard's
events), which read the events' columns as arrays, call the kernel once per frame and
put the results back as columns; the API calls the kernel directly on a request's
events (``uba.api.inference``). So an event gets the same features, hence the same
score, wherever it is scored.

Features are ROW-LOCAL: an event's features depend only on its own fields and its
user's baseline row, never on other events of the day. Hour and weekday are read from
``hour_of_day`` / ``day_of_week``, else from ``timestamp`` (the API may have no
timestamp).

Shaping for an Isolation Forest: the forest isolates points that sit alone at the end
of a feature's range, and every split point is drawn uniformly over that range. So the
deviation features are built to put normal events in a compact block near 0 and
contextual anomalies far out on one side:

- deviations are one-sided (longer sessions, more actions, rarer categories); the
  harmless side (a short session) is folded to 0 instead of adding a second tail of
  false alarms;
- category rarities are measured relative to the population (``ln(p_pop / p_user)``),
  so an ordinary event of any type maps to ~0 instead of to that type's global rarity;
- everything is clipped, so one absurd value cannot stretch a feature's range and
  dilute the split points for the rest.

See docs/features.md for every formula and why it exists.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from uba.features.compiled import (
    BOOLEAN_CONTEXT,
    CONTEXT_COLUMNS,
    DEVIATION_COLUMNS,
    FEATURE_COLUMNS,
    INTEGER_CONTEXT,
    NULLABLE_CONTEXT,
    PEER_FEATURE_COLUMNS,
    CompiledBaselines,
    EventColumns,
    compile_baselines,
    feature_arrays,
)

FEATURE_SET_VERSION = "uba-features-8"
BASELINE_PREFIX = "bl_"
# The baseline columns copied onto every event (the flagged summary quotes them);
# an unknown user's history is 0 days.
BASELINE_COPIES = pl.Schema({
    "history_days": pl.Int64(), "days_active": pl.Int64(), "events_per_active_day": pl.Float64(),
})
_OWN_HISTORY = ("history_days", "days_active")

__all__ = [
    "BASELINE_COPIES", "BASELINE_PREFIX", "CONTEXT_COLUMNS", "DEVIATION_COLUMNS", "FEATURE_COLUMNS",
    "FEATURE_SET_VERSION", "PEER_FEATURE_COLUMNS", "has_peer_statistics", "event_features", "features_frame", "frame_columns", "output_schema",
]


def _hour(events: pl.DataFrame) -> pl.Expr:
    hour = pl.col("hour_of_day").cast(pl.Float64)
    if _fills_from_timestamp(events, "hour_of_day"):
        hour = pl.coalesce(hour, pl.col("timestamp").dt.hour().cast(pl.Float64))
    return hour


def _weekday(events: pl.DataFrame) -> pl.Expr:
    day = pl.col("day_of_week").cast(pl.Float64)
    if _fills_from_timestamp(events, "day_of_week"):
        day = pl.coalesce(day, (pl.col("timestamp").dt.weekday() - 1).cast(pl.Float64))
    return day


def _fills_from_timestamp(events: pl.DataFrame, field: str) -> bool:
    """Whether a missing clock field can and must be taken from the timestamp. A column
    without nulls (every stored day: ingest derives both fields) skips the timestamp's
    calendar arithmetic, which cost 10 ms per 250 k rows for the hour alone."""
    return "timestamp" in events.schema and events[field].null_count() > 0


def _codes(column: str, names: tuple[str, ...]) -> pl.Expr:
    """Position of the category in ``names`` (any other value or null: ``len(names)``)."""
    return (pl.col(column).cast(pl.String)
            .replace_strict(list(names), list(range(len(names))), default=len(names), return_dtype=pl.Int64)
            .fill_null(len(names)))


def frame_columns(events: pl.DataFrame, baselines: CompiledBaselines) -> EventColumns:
    """The kernel's inputs from a frame of events in the stored shape (vectorised lookups)."""
    ids, rows = baselines.row_lookup
    inputs = events.select(
        pl.col("user_id").cast(pl.String)
        .replace_strict(ids, rows, default=baselines.population, return_dtype=pl.Int64)
        .fill_null(baselines.population).alias("row"),
        pl.col("session_duration_sec").cast(pl.Float64).alias("duration"),
        pl.col("events_in_session").cast(pl.Float64).alias("actions"),
        _hour(events).alias("hour"),
        _weekday(events).alias("weekday"),
        _codes("device_type", baselines.devices).alias("device"),
        _codes("event_type", baselines.event_types).alias("event_type"),
    )

    def floats(name: str) -> np.ndarray:
        return inputs[name].to_numpy().astype(np.float64, copy=False)

    row = inputs["row"].to_numpy().astype(np.intp, copy=False)
    return EventColumns(
        rows=row, known=row != baselines.population, duration=floats("duration"), actions=floats("actions"),
        hour=floats("hour"), weekday=floats("weekday"),
        device=inputs["device"].to_numpy().astype(np.intp, copy=False),
        event_type=inputs["event_type"].to_numpy().astype(np.intp, copy=False),
    )


def _series(name: str, values: np.ndarray) -> pl.Series:
    if name in BOOLEAN_CONTEXT:
        return pl.Series(name, values, dtype=pl.Boolean)
    if name in INTEGER_CONTEXT:
        return pl.Series(name, values, dtype=pl.Float64, nan_to_null=True).cast(pl.Int64)
    return pl.Series(name, values, dtype=pl.Float64, nan_to_null=name in NULLABLE_CONTEXT)


def _baseline_copies(baselines: CompiledBaselines, columns: EventColumns) -> list[pl.Series]:
    present = [c for c in BASELINE_COPIES if c in baselines.frame.columns]
    rows = baselines.frame.select(present).cast(BASELINE_COPIES)[columns.rows]
    known = pl.Series(columns.known)
    out = []
    for name in present:
        values = rows[name]
        if name in _OWN_HISTORY:
            values = pl.select(pl.when(known).then(values).otherwise(0)).to_series()
        out.append(values.alias(BASELINE_PREFIX + name))
    return out


def features_frame(events: pl.DataFrame, baselines: CompiledBaselines) -> pl.DataFrame:
    """``events`` with ``known_user``, FEATURE_COLUMNS (Float64, finite), CONTEXT_COLUMNS
    and the BASELINE_COPIES (``bl_*``), in input order."""
    columns = frame_columns(events, baselines)
    values = feature_arrays(baselines, columns)
    names = ("known_user", *baselines.feature_columns, *CONTEXT_COLUMNS[1:])
    computed = [_series(name, values[name]) for name in names]
    return events.with_columns(*computed, *_baseline_copies(baselines, columns))


def has_peer_statistics(baselines: pl.Schema | pl.LazyFrame | pl.DataFrame) -> bool:
    """Whether a baseline frame carries peer-group statistics (a directory was stored),
    hence whether its events get the peer deviation features."""
    schema = baselines.collect_schema() if isinstance(baselines, pl.LazyFrame) else \
        baselines.schema if isinstance(baselines, pl.DataFrame) else baselines
    return "peer_hour_mean" in schema


def output_schema(events: pl.Schema, peers: bool = False) -> dict[str, pl.DataType]:
    """The schema ``features_frame`` gives a frame of this schema (``peers``: with the
    peer deviation features)."""
    out: dict[str, pl.DataType] = dict(events)
    for name in ("known_user", *FEATURE_COLUMNS, *(PEER_FEATURE_COLUMNS if peers else ()), *CONTEXT_COLUMNS[1:]):
        out[name] = (pl.Boolean() if name in BOOLEAN_CONTEXT else
                     pl.Int64() if name in INTEGER_CONTEXT else pl.Float64())
    out.update({BASELINE_PREFIX + name: dtype for name, dtype in BASELINE_COPIES.items()})
    return out


def event_features(events: pl.LazyFrame, baselines: pl.LazyFrame | pl.DataFrame) -> pl.LazyFrame:
    """Events (EVENT_SCHEMA) + baselines (``user_baselines``) -> events with features.

    Lazy: the snapshot is compiled and the kernel run when the result is collected.
    """
    compiled: list[CompiledBaselines] = []

    def run(frame: pl.DataFrame) -> pl.DataFrame:
        if not compiled:
            table = baselines.collect() if isinstance(baselines, pl.LazyFrame) else baselines
            compiled.append(compile_baselines(table))
        return features_frame(frame, compiled[0])

    schema = output_schema(events.collect_schema(), has_peer_statistics(baselines))
    return events.map_batches(run, schema=schema)
