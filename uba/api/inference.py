"""Scoring request events with the batch job's own feature, reason and model code.

The request events become a frame in the stored event shape (``EVENT_SCHEMA``), meet
their users' rows of the baseline snapshot through ``attach_baselines``, get
``compute_features`` and ``explain`` exactly as ``uba-batch score`` applies them, and
the bundle's detector scores the feature matrix. Nothing here re-implements a feature:
that is what makes an event scored online and in batch get the same score.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import TYPE_CHECKING

import numpy as np
import polars as pl

from uba.features.events import features_frame
from uba.feedback import apply_suppressions
from uba.reasons import explain
from uba.schema import EVENT_SCHEMA

if TYPE_CHECKING:
    from uba.api.state import BaselineIndex, ModelState

_ROW_ORDER = "__request_row"


@dataclass(frozen=True, slots=True)
class ScoringEvent:
    """One validated event in stored form (user_id as string, UTC time fields filled)."""

    event_id: str | None
    user_id: str
    timestamp: datetime | None
    event_type: str
    session_duration_sec: float
    events_in_session: int
    device_type: str
    hour_of_day: int
    day_of_week: int
    session_id: str | None


@dataclass(frozen=True)
class ScoringResult:
    scores: np.ndarray
    flags: np.ndarray
    thresholds: np.ndarray
    known_user: list[bool]
    reasons: list[list[str]]
    reason_kinds: list[list[str]]
    suppressed: list[bool]
    suppressed_by: list[str | None]


def events_frame(events: Sequence[ScoringEvent]) -> pl.DataFrame:
    """Request events as one frame in ``EVENT_SCHEMA``, plus their position in the request."""
    columns = {name: [getattr(e, name) for e in events] for name in EVENT_SCHEMA}
    frame = pl.DataFrame(columns, schema=EVENT_SCHEMA)
    return frame.with_row_index(_ROW_ORDER)


def feature_frame(
    baselines: BaselineIndex, events: Sequence[ScoringEvent], max_reasons: int
) -> pl.DataFrame:
    """Features and reasons for the events, in request order (the snapshot is compiled at
    load, so the cost does not grow with its size)."""
    frame = events_frame(events)
    features = explain(features_frame(frame, baselines.compiled).lazy(), max_reasons)
    return features.sort(_ROW_ORDER).collect()


def event_day(event: ScoringEvent, today: date) -> date:
    """The day a rule's expiry is judged against: the event's UTC date, as ``score --date``
    judges it for its day; an event given only hour/day has no date, so today (UTC)."""
    return event.timestamp.astimezone(UTC).date() if event.timestamp is not None else today


def mark_suppressions(
    rules: pl.DataFrame, events: Sequence[ScoringEvent], flags: np.ndarray, reason_kinds: list[list[str]],
    today: date | None = None,
) -> tuple[list[bool], list[str | None]]:
    """``suppressed`` / ``suppressed_by`` per event, from ``uba.feedback.apply_suppressions``
    (the nightly job's own matching), applied once per event day present in the request."""
    count = len(events)
    if rules.is_empty() or not flags.any():
        return [False] * count, [None] * count
    today = today or datetime.now(UTC).date()
    frame = pl.DataFrame(
        {"user_id": [e.user_id for e in events], "reason_kinds": reason_kinds, "is_anomaly": flags.tolist(),
         "day": [event_day(e, today) for e in events]},
        schema={"user_id": pl.String, "reason_kinds": pl.List(pl.String), "is_anomaly": pl.Boolean,
                "day": pl.Date},
    ).with_row_index(_ROW_ORDER)
    by: list[str | None] = [None] * count
    for day in frame["day"].unique().to_list():
        marked = apply_suppressions(frame.lazy().filter(pl.col("day") == day), rules, day).collect()
        for row, rule in zip(marked[_ROW_ORDER].to_list(), marked["suppressed_by"].to_list(), strict=True):
            by[row] = rule
    return [rule is not None for rule in by], by


def score_events(state: ModelState, events: Sequence[ScoringEvent], max_reasons: int) -> ScoringResult:
    """Score events against the state's model and baselines; one vectorised pass for the lot.

    Each event is judged against its user's cut when per-user thresholds are on
    (``ModelState.thresholds_for``), and flagged events matching an analyst's suppression
    rule are marked ``suppressed`` (still flagged), as ``score --date`` does.
    """
    features = feature_frame(state.baselines, events, max_reasons)
    names = list(state.bundle.detector.feature_names)
    matrix = np.ascontiguousarray(features.select(names).to_numpy(), dtype=np.float64)
    scores = np.asarray(state.scorer(matrix), dtype=np.float64)
    cuts = state.thresholds_for([e.user_id for e in events])
    flags = scores >= cuts
    reason_kinds = features["reason_kinds"].to_list()
    suppressed, suppressed_by = mark_suppressions(state.rules, events, flags, reason_kinds)
    return ScoringResult(
        scores=scores,
        flags=flags,
        thresholds=cuts,
        known_user=features["known_user"].to_list(),
        reasons=features["reasons"].to_list(),
        reason_kinds=reason_kinds,
        suppressed=suppressed,
        suppressed_by=suppressed_by,
    )
