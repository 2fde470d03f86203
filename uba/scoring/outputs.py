"""The shape of what a scoring run publishes: pure functions on LazyFrames.

``scores/`` holds every event of the day with its score, flag, reasons and the model
that produced them; ``flagged/`` holds the events over the threshold plus the summary
of the user's baseline an analyst needs to judge them ("usually active 09:00-17:00,
median session 20 min, 25 days of history"). The summary comes from the feature
module's context columns, the same numbers the reasons quote. Rows are sorted on a
total key so the same input and model give the same bytes whatever the execution mode.
"""

from __future__ import annotations

import polars as pl

SCORE_COLUMNS: tuple[str, ...] = (
    "event_id",
    "user_id",
    "timestamp",
    "event_type",
    "device_type",
    "session_duration_sec",
    "events_in_session",
    "hour_of_day",
    "day_of_week",
    "session_id",
    "anomaly_score",
    "is_anomaly",
    "threshold",
    "model_version",
    "reasons",
    "reason_kinds",
    "known_user",
    # the user's effective cut and suppression (uba.scoring.hooks)
    "user_threshold",
    "suppressed",
    "suppressed_by",
)
SCORE_SORT_KEY: tuple[str, ...] = ("timestamp", "event_id")
FLAGGED_SORT_KEY: tuple[str, ...] = ("anomaly_score", "event_id")


def _usual_hours_text() -> pl.Expr:
    def two_digits(col: str) -> pl.Expr:
        return pl.col(col).cast(pl.String).str.zfill(2)

    return pl.format("{}:00-{}:00", two_digits("user_usual_hour_start"), two_digits("user_usual_hour_end"))


def flagged_context() -> dict[str, pl.Expr]:
    """The user's baseline as an analyst reads it next to a flagged event.

    For an unknown user (``known_user`` false) these describe the population and the
    history is 0 days.
    """
    return {
        "baseline_history_days": pl.col("bl_history_days"),
        "baseline_days_active": pl.col("bl_days_active"),
        "baseline_events_per_active_day": pl.col("bl_events_per_active_day"),
        "usual_hours": _usual_hours_text(),
        "user_usual_hour_start": pl.col("user_usual_hour_start"),
        "user_usual_hour_end": pl.col("user_usual_hour_end"),
        "user_median_session_sec": pl.col("user_median_session_sec"),
        "user_median_actions": pl.col("user_median_actions"),
        "user_device_share": pl.col("user_device_share"),
        "user_event_type_share": pl.col("user_event_type_share"),
        "user_download_share": pl.col("user_download_share"),
        "user_weekday_share": pl.col("user_weekday_share"),
    }


def score_rows(annotated: pl.LazyFrame) -> pl.LazyFrame:
    """Every event in the published ``scores/`` shape and order."""
    return annotated.select(SCORE_COLUMNS).sort(SCORE_SORT_KEY)


def in_score_order(frame: pl.DataFrame) -> bool:
    """Whether ``frame``'s rows already stand in ``score_rows``' order, each strictly after
    the one before on SCORE_SORT_KEY (no null in it): that key then orders them one way
    only, so sorting would only copy every column. Ingest writes each events part in this
    order, so a shard read from one part usually is."""
    first, second = (pl.col(name) for name in SCORE_SORT_KEY)
    later = (first > first.shift()) | ((first == first.shift()) & (second > second.shift()))
    ordered = later.slice(1).fill_null(False).all() & (first.null_count() == 0) & (second.null_count() == 0)
    return bool(frame.select(ordered).item())


def flagged_rows(annotated: pl.LazyFrame) -> pl.LazyFrame:
    """Events over the threshold with their user's baseline summary, most anomalous first."""
    return (
        annotated.filter(pl.col("is_anomaly"))
        .select(*SCORE_COLUMNS, *(expr.alias(name) for name, expr in flagged_context().items()))
        .sort(FLAGGED_SORT_KEY, descending=[True, False])
    )
