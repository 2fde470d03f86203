"""Scoring request events with the batch job's own feature, reason, model and decision code.

No frame and no query per request: the baseline snapshot was compiled into per-user
arrays at load (``uba.features.compiled``), so a request's events become a few arrays
(``event_columns``), get their features from the same kernel the batch shards call
(``feature_arrays``), their reason kinds and sentences from ``uba.features.reasons`` (severity
arrays, plain string formatting), their scores from the bundle's detector and their
verdict from ``uba.alerting.thresholds.decide``. Nothing here re-implements a feature, a reason
or a cut: that is what makes an event scored online and in batch get the same answer.
``/predict/batch`` takes the same path with more rows; a lone event (a ``/predict`` nobody
coalesced with) takes it in plain floats (``score_event``: ``feature_values``,
``severity_row``, ``listed_kinds``), the same formulas in ``uba.features.elementwise``'s
scalar arithmetic, then the same forest and ``decide``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import cast

import numpy as np

from uba.alerting.feedback import Rule
from uba.alerting.thresholds import Decision, decide
from uba.api.model_state import ModelState
from uba.features.compiled import event_columns, event_row, feature_arrays, feature_values
from uba.features.reasons import (
    DOWNLOAD,
    SENTENCE_INPUTS,
    SentenceInputs,
    listed_kinds,
    reason_kinds,
    sentences,
    severity_matrix,
    severity_row,
)

# SENTENCE_INPUTS that come from the request itself rather than from the kernel
_EVENT_FIELDS = ("event_type", "device_type", "session_duration_sec", "events_in_session")
_KERNEL_INPUTS = tuple(name for name in SENTENCE_INPUTS if name not in _EVENT_FIELDS)


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


def event_day(event: ScoringEvent, today: date) -> date:
    """The day a rule's expiry is judged against: the event's UTC date, as ``score --date``
    judges it for its day; an event given only hour/day has no date, so today (UTC)."""
    return event.timestamp.astimezone(UTC).date() if event.timestamp is not None else today


def _sentence_rows(values: dict[str, np.ndarray], events: Sequence[ScoringEvent]) -> list[SentenceInputs]:
    """One plain-value mapping per event with what its sentences read."""
    kernel = {name: values[name].tolist() for name in _KERNEL_INPUTS}
    rows: list[dict[str, object]] = []
    for i, event in enumerate(events):
        row: dict[str, object] = {name: column[i] for name, column in kernel.items()}
        for name in _EVENT_FIELDS:
            row[name] = getattr(event, name)
        rows.append(row)
    return cast("list[SentenceInputs]", rows)  # every SENTENCE_INPUTS key is set above


def _rules_for(state: ModelState, events: Sequence[ScoringEvent]) -> list[list[Rule]]:
    """Active suppression rules for the events' day (one day per request in practice;
    several days are judged one by one, as ``score --date`` judges each day)."""
    if state.rules.is_empty():
        return []
    today = datetime.now(UTC).date()
    return [state.rules_on(event_day(e, today)) for e in events]


def score_events(state: ModelState, events: Sequence[ScoringEvent], max_reasons: int) -> ScoringResult:
    """Score events against the state's model and compiled snapshot; one vectorised pass for the lot
    (a lone event, what a ``/predict`` nearly always is, in plain floats: ``score_event``)."""
    if len(events) == 1:
        return score_event(state, events[0], max_reasons)
    compiled = state.baselines.compiled
    user_ids = [e.user_id for e in events]
    columns = event_columns(
        compiled, user_ids, [e.event_type for e in events], [e.device_type for e in events],
        [e.session_duration_sec for e in events], [e.events_in_session for e in events],
        [e.hour_of_day for e in events], [e.day_of_week for e in events],
    )
    values = feature_arrays(compiled, columns)
    names = state.bundle.detector.feature_names
    matrix = np.empty((len(events), len(names)), dtype=np.float64)
    for j, name in enumerate(names):
        matrix[:, j] = values[name]
    scores = np.asarray(state.scorer(matrix), dtype=np.float64)
    severity = severity_matrix(values, np.array([e.event_type == DOWNLOAD for e in events], dtype=bool))
    kinds = reason_kinds(severity, max_reasons)
    decision = _decide(state, events, scores, kinds)
    rows = _sentence_rows(values, events)
    return ScoringResult(
        scores=scores, flags=decision.is_anomaly, thresholds=decision.cuts,
        known_user=columns.known.tolist(),
        reasons=[sentences(row, k) for row, k in zip(rows, kinds, strict=True)],
        reason_kinds=kinds,
        suppressed=[rule is not None for rule in decision.suppressed_by],
        suppressed_by=decision.suppressed_by,
    )


def score_event(state: ModelState, event: ScoringEvent, max_reasons: int) -> ScoringResult:
    """``score_events`` of one event: the same kernel, reasons, forest and decision, with
    the features and severities computed on Python floats (``feature_values``), which
    costs a fifth of the numpy calls on one-element arrays."""
    compiled = state.baselines.compiled
    row = event_row(compiled, event.user_id, event.event_type, event.device_type, event.session_duration_sec,
                    event.events_in_session, event.hour_of_day, event.day_of_week)
    values = feature_values(compiled, row)
    matrix = np.array([[values[name] for name in state.bundle.detector.feature_names]], dtype=np.float64)
    scores = np.asarray(state.scorer(matrix), dtype=np.float64)
    kinds = [listed_kinds(severity_row(values, event.event_type == DOWNLOAD), max_reasons)]
    decision = _decide(state, (event,), scores, kinds)
    inputs: dict[str, object] = {name: values[name] for name in _KERNEL_INPUTS}
    for name in _EVENT_FIELDS:
        inputs[name] = getattr(event, name)
    rule = decision.suppressed_by[0]
    return ScoringResult(
        scores=scores, flags=decision.is_anomaly, thresholds=decision.cuts, known_user=[row.known],
        reasons=[sentences(cast("SentenceInputs", inputs), kinds[0])], reason_kinds=kinds,
        suppressed=[rule is not None], suppressed_by=decision.suppressed_by,
    )


def _decide(state: ModelState, events: Sequence[ScoringEvent], scores: np.ndarray,
            kinds: list[list[str]]) -> Decision:
    """``uba.alerting.thresholds.decide`` per event day (rules expire by day; one day in practice)."""
    user_ids = [e.user_id for e in events]
    tops = [k[0] if k else None for k in kinds]
    cuts = state.thresholds_for(user_ids)
    per_event = _rules_for(state, events)
    if not per_event or all(r is per_event[0] for r in per_event):
        return decide(scores, cuts, user_ids, tops, per_event[0] if per_event else [])
    decisions = [decide(scores[i:i + 1], cuts[i:i + 1], user_ids[i:i + 1], tops[i:i + 1], rules)
                 for i, rules in enumerate(per_event)]
    return Decision(cuts=cuts, is_anomaly=np.concatenate([d.is_anomaly for d in decisions]),
                    suppressed_by=[d.suppressed_by[0] for d in decisions])
