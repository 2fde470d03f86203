"""The shape of what a scoring run publishes: pure functions on LazyFrames.

``scores/`` holds every event of the day with its score, flag, reasons and the model
that produced them; ``flagged/`` holds the events over the threshold plus the summary
of the user's baseline an analyst needs to judge them ("usually active 9-17h, median
session 20 min, 25 days of history"). Rows are sorted on a total key so the same input
and model give the same bytes whatever the execution mode.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from uba.reasons import explain

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
)
SCORE_SORT_KEY: tuple[str, ...] = ("timestamp", "event_id")
BASELINE_PREFIX = "baseline_"


def scored_events(features: pl.LazyFrame, scores: np.ndarray, flags: np.ndarray,
                  threshold: float, model_version: str, max_reasons: int) -> pl.LazyFrame:
    """Every event with its score, flag and ranked reasons, in the published column order.

    ``features`` must be the exact frame (same row order) the scores were computed from;
    ``flags`` come from the detector so "anomalous" has one definition everywhere.
    """
    with_scores = features.with_columns(
        pl.Series("anomaly_score", np.asarray(scores, dtype=np.float64)),
        pl.Series("is_anomaly", np.asarray(flags, dtype=bool)),
    ).with_columns(
        pl.lit(float(threshold), dtype=pl.Float64).alias("threshold"),
        pl.lit(model_version, dtype=pl.String).alias("model_version"),
    )
    return explain(with_scores, max_reasons=max_reasons).select(SCORE_COLUMNS).sort(SCORE_SORT_KEY)


def _usual_hours_text() -> pl.Expr:
    start = pl.col("usual_hour_start")
    stop = (start + pl.col("usual_hour_length")) % 24
    return pl.format("{}:00-{}:00", start.cast(pl.String).str.zfill(2), stop.cast(pl.String).str.zfill(2))


def baseline_summary(baselines: pl.LazyFrame) -> pl.LazyFrame:
    """What an analyst needs to judge a flagged event against the user's normal, in plain units.

    Session length and actions are kept in log space by the baselines; ``exp(mean of
    log1p) - 1`` turns them back into the user's typical (geometric-mean, about median)
    session seconds and actions per session. Device and event-type shares come from
    the raw (unshrunk) ``share_device_*`` / ``share_event_*`` columns.
    """
    schema = baselines.collect_schema()
    shares = [c for c in schema if c.startswith(("share_device_", "share_event_"))]
    return baselines.select(
        pl.col("user_id"),
        pl.col("history_days").alias(f"{BASELINE_PREFIX}history_days"),
        pl.col("days_active").alias(f"{BASELINE_PREFIX}days_active"),
        pl.col("events_per_active_day").alias(f"{BASELINE_PREFIX}events_per_active_day"),
        _usual_hours_text().alias(f"{BASELINE_PREFIX}usual_hours"),
        (pl.col("raw_mean_log_duration").exp() - 1.0).alias(f"{BASELINE_PREFIX}typical_session_sec"),
        (pl.col("raw_mean_log_actions").exp() - 1.0).alias(f"{BASELINE_PREFIX}typical_events_in_session"),
        pl.col("max_events_in_session").alias(f"{BASELINE_PREFIX}max_events_in_session"),
        *(pl.col(c).alias(f"{BASELINE_PREFIX}{c}") for c in shares),
    )


def flagged_events(scored: pl.LazyFrame, baselines: pl.LazyFrame) -> pl.LazyFrame:
    """Events over the threshold with their user's baseline summary, most anomalous first.

    Unknown users have no baseline row, so their summary columns stay null (and
    ``known_user`` says why).
    """
    flagged = scored.filter(pl.col("is_anomaly"))
    summary = baseline_summary(baselines)
    return flagged.join(summary, on="user_id", how="left", maintain_order="left").sort(
        ["anomaly_score", "event_id"], descending=[True, False]
    )
