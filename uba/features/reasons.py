"""Plain-word reasons for a score, ranked, derived from the deviation features.

An analyst needs to know *why* an event stands out before acting on it. Every reason
kind gets a severity on one comparable scale, a z-score: z-scores against the user's
baseline as they are, rarities (surprises in nats, see docs/features.md) as the
z-equivalent ``z(s) = sqrt(2 * s)``:

==================  ===========================================================
kind                severity
==================  ===========================================================
hour                max(hour_z, z(hour_rarity))
session_length      max(session_length_z, length_for_actions_z) (above the user's
                    own length, or above their length for that many actions)
actions             actions_z (above the user's mean only)
device              z(device_rarity_nats)
event_type          z(event_type_rarity_nats)  (0 for downloads: see below)
download_intensity  z(download_surprise)  (downloads only)
time_of_week        z(weekday_rarity)
global              global_extremity (already a z against the population)
==================  ===========================================================

Downloads are described by the download kind only, time of week by its weekday part
(the hour part is the hour reason), and a long session once, by whichever comparison
is the stronger: "session 9.1x longer than this user's median" against the user's
usual length, or "session 3.2x longer than this user's usual for 12 actions" against
their usual length for a session with that many actions (``uba-features-7``), so one
fact is not told twice.

Reasons with severity >= MIN_SEVERITY are listed, strongest first (ties keep the order
of REASON_KINDS), at most ``max_reasons``; when none reaches it, the strongest is still
listed if it reaches MIN_TOP_SEVERITY (a one-sigma deviation), so a flagged event is
rarely left without an explanation, while an ordinary event gets an empty list rather
than an overstated one.

Defined once for both callers: severities are written once (``_severities``) against
``uba.features.elementwise``, as arrays on the feature kernel's context (``severity_matrix``)
or as one event's plain floats (``severity_row``, for ``/predict``); the ranking rule too
(``rank_reason_kinds`` on arrays, ``listed_kinds`` on one row, sharing the cut-off and
count; a batch shard ranks its rows with the rule compiled, ``uba.model.kernel``'s
``_rank_loop``, which the tests hold to the same answers on random and adversarial
severities), and a sentence is
plain string formatting of one event's values (``sentences``), so the API explains one
event in microseconds and the batch job (``explain``, on a frame) phrases only the rows
someone reads. A sentence whose inputs are missing falls back to the kind's name.
Numbers are rounded as the former Polars expressions rounded them (half to even on the
scaled value), so the texts did not change.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import TypedDict, cast

import numpy as np
import numpy.typing as npt
import polars as pl
import pyarrow as pa

from uba.features.elementwise import ARRAYS, FLOATS, Math, Values

REASON_KINDS: tuple[str, ...] = (
    "hour",
    "session_length",
    "actions",
    "device",
    "event_type",
    "download_intensity",
    "time_of_week",
    "global",
)
MIN_SEVERITY = 2.0
MIN_TOP_SEVERITY = 1.0
WEEKDAY_NAMES = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
DOWNLOAD = "download"
FloatArray = npt.NDArray[np.float64]
IndexArray = npt.NDArray[np.intp]
# What a sentence reads, besides the kinds: the event's own fields and the kernel's context.
SENTENCE_INPUTS: tuple[str, ...] = (
    "known_user", "event_type", "device_type", "session_duration_sec", "events_in_session",
    "event_hour", "event_weekday", "actions_z", "session_length_z", "length_for_actions_z",
    "user_expected_log_session", "user_expected_for_log_actions", "global_by_actions", "user_median_session_sec",
    "user_median_actions", "user_usual_hour_start", "user_usual_hour_end", "user_device_share",
    "user_event_type_share", "user_download_share", "user_weekday_share",
)


class SentenceInputs(TypedDict):
    """One event's SENTENCE_INPUTS as plain values, None or NaN where missing (a frame
    row's ``to_dicts()`` in the batch job, the request and the kernel's arrays in the API)."""

    known_user: bool
    event_type: str | None
    device_type: str | None
    session_duration_sec: float
    events_in_session: int
    event_hour: float
    event_weekday: float
    actions_z: float
    session_length_z: float
    length_for_actions_z: float
    user_expected_log_session: float | None
    user_expected_for_log_actions: float | None
    global_by_actions: bool
    user_median_session_sec: float | None
    user_median_actions: float | None
    user_usual_hour_start: float | None
    user_usual_hour_end: float | None
    user_device_share: float | None
    user_event_type_share: float | None
    user_download_share: float | None
    user_weekday_share: float | None


SEVERITY_INPUTS: tuple[str, ...] = (
    "hour_z", "hour_rarity", "session_length_z", "length_for_actions_z", "actions_z", "device_rarity_nats",
    "event_type_rarity_nats", "download_surprise", "weekday_rarity", "global_extremity",
)


def _z(nats: Values, xp: Math) -> Values:
    """z-equivalent of a surprise in nats: sqrt(2 s)."""
    return xp.sqrt(2.0 * xp.maximum(nats, 0.0))


def _severities(f: Callable[[str], Values], is_download: Values, xp: Math) -> list[Values]:
    """The one definition of the severities, REASON_KINDS in order, in ``xp``'s arithmetic
    (``f`` gives a SEVERITY_INPUTS value, NaN where missing)."""
    return [
        xp.fmax(f("hour_z"), _z(f("hour_rarity"), xp)),
        xp.fmax(xp.fmax(f("session_length_z"), f("length_for_actions_z")), 0.0),
        xp.maximum(f("actions_z"), 0.0),
        _z(f("device_rarity_nats"), xp),
        xp.where(is_download, 0.0, _z(f("event_type_rarity_nats"), xp)),
        _z(f("download_surprise"), xp),
        _z(f("weekday_rarity"), xp),
        f("global_extremity"),
    ]


def severity_matrix(values: Mapping[str, np.ndarray], is_download: npt.NDArray[np.bool_]) -> FloatArray:
    """Severity of every reason kind (rows x REASON_KINDS), as documented in the module.

    ``values`` holds SEVERITY_INPUTS as float arrays (NaN where missing); a missing
    severity counts as 0. The rows x kinds view of ``_severities_by_kind``.
    """
    return _severities_by_kind(values, is_download).T


def _severities_by_kind(values: Mapping[str, np.ndarray], is_download: npt.NDArray[np.bool_]) -> FloatArray:
    """``severity_matrix`` held kind by kind (REASON_KINDS x rows, C order): each kind's
    severities are written in one run (filling a rows x kinds matrix column by column
    cost a shard as much as the arithmetic), and np.column_stack or np.where cost more
    than the arithmetic on the API's one-event arrays."""
    def f(name: str) -> FloatArray:
        return np.asarray(values[name], dtype=np.float64)

    severity = np.empty((len(REASON_KINDS), len(is_download)), dtype=np.float64)
    with np.errstate(invalid="ignore"):
        for k, column in enumerate(_severities(f, is_download, ARRAYS)):
            severity[k] = column
    np.copyto(severity, 0.0, where=np.isnan(severity))
    return severity


def severity_row(values: Mapping[str, Values], is_download: bool) -> list[float]:
    """``severity_matrix`` of one event from plain floats (``feature_values``)."""
    return [0.0 if v != v else v for v in _severities(values.__getitem__, is_download, FLOATS)]


# ---- number formatting -----------------------------------------------------------------


def _known(value: float | None) -> float | None:
    """``value``, or None when it is missing (None or NaN)."""
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else value


def _round1(value: float) -> str:
    """One decimal, rounded half to even on the scaled value (as the former Polars ``round(1)``)."""
    return repr(round(value * 10.0) / 10.0)


def _ratio(value: float | None) -> str | None:
    """9.1 below 10, 42 above: as precise as a person needs."""
    known = _known(value)
    if known is None:
        return None
    return _round1(known) if known < 10 else str(round(known))


def _percent(share: float | None) -> str | None:
    known = _known(share)
    if known is None:
        return None
    pct = known * 100.0
    return _round1(pct) if pct < 1 else str(round(pct))


def _duration(seconds: float | None) -> str | None:
    known = _known(seconds)
    if known is None:
        return None
    if known < 120:
        return f"{round(known)} s"
    if known < 7200:
        return f"{round(known / 60)} min"
    return f"{_round1(known / 3600)} h"


def _clock(hour: int) -> str:
    return f"{str(hour).zfill(2)}:00"


def _per_median(value: float, median: float | None) -> float | None:
    """``value`` over the user's median, the median counted as at least 1."""
    known = _known(median)
    return None if known is None else value / max(known, 1.0)


def _whole(value: float | None) -> int | None:
    known = _known(value)
    return None if known is None else int(known)


# ---- texts -----------------------------------------------------------------------------


def _owner(row: SentenceInputs) -> str:
    """Whose habits the baseline describes: the user's, or everyone's for an unknown user."""
    return "this user's" if row["known_user"] else "most users'"


def _subject(row: SentenceInputs) -> str:
    return "this user" if row["known_user"] else "a new user"


def _first_or_rare(row: SentenceInputs, share: float | None, first: str, rare: str) -> str | None:
    """``first`` when a known user never did this (share missing or 0), else ``rare`` with
    the share in percent (None without one)."""
    known = _known(share)
    if row["known_user"] and (known is None or known <= 0.0):
        return first
    percent = _percent(share)
    return None if percent is None else rare.format(percent=percent)


def _hour_text(row: SentenceInputs) -> str | None:
    hour, start, end = int(row["event_hour"]), _whole(row["user_usual_hour_start"]), _whole(row["user_usual_hour_end"])
    if start is None or end is None:
        return None
    if start == end:
        return f"{_clock(hour)} is an unusual hour for {_subject(row)}"
    inside = start <= hour < end if start < end else (hour >= start or hour < end)
    window = f"{_clock(start)}-{_clock(end)}"
    if not inside:
        return f"{_clock(hour)} is outside {_owner(row)} usual {window}"
    return f"{_clock(hour)} is a rare hour for {_subject(row)} (usual hours {window})"


def _session_text(row: SentenceInputs) -> str | None:
    if row["length_for_actions_z"] > row["session_length_z"]:  # NaN: False
        return _session_for_actions_text(row)
    median = row["user_median_session_sec"]
    ratio = _ratio(_per_median(row["session_duration_sec"], median))
    if ratio is None:
        return None
    return f"session {ratio}x longer than {_owner(row)} median ({_duration(median)})"


def _session_for_actions_text(row: SentenceInputs) -> str | None:
    """The session against the user's usual length for a session with as many actions, or,
    for a session with fewer (more) actions than the user ever usually takes, against their
    sessions at that edge: the line is not read beyond it (docs/features.md), and naming
    the session's own count there would quote the edge's length as the usual for it."""
    expected_log = _known(row["user_expected_log_session"])
    if expected_log is None:
        return None
    expected = max(math.expm1(expected_log), 0.0)
    ratio = _ratio(_per_median(row["session_duration_sec"], expected))
    if ratio is None:
        return None
    actions = row["events_in_session"]
    read_at = _known(row["user_expected_for_log_actions"])
    usual_actions = actions if read_at is None else round(math.expm1(read_at))
    if usual_actions == actions:
        return f"session {ratio}x longer than {_owner(row)} usual for {_actions(actions)} ({_duration(expected)})"
    side = "fewer" if usual_actions > actions else "more"
    return (f"session {ratio}x longer than {_owner(row)} usual for {_actions(usual_actions)} ({_duration(expected)}); "
            f"it had {actions}, {side} than they usually take")


def _actions(count: int) -> str:
    return f"{count} action{'' if count == 1 else 's'}"


def _actions_text(row: SentenceInputs) -> str | None:
    median = row["user_median_actions"]
    ratio = _ratio(_per_median(row["events_in_session"], median))
    if ratio is None or median is None:  # no ratio without a median
        return None
    return (f"{row['events_in_session']} actions in the session, {ratio}x {_owner(row)} median "
            f"({round(median)})")


def _device_text(row: SentenceInputs) -> str | None:
    device = row["device_type"]
    if device is None:
        return None
    return _first_or_rare(row, row["user_device_share"], f"first {device} use for this user",
                          f"{device} is rare for this user ({{percent}}% of events)")


def _event_type_text(row: SentenceInputs) -> str | None:
    kind = row["event_type"]
    if kind is None:
        return None
    return _first_or_rare(row, row["user_event_type_share"], f"first {kind} event for this user",
                          f"{kind} events are rare for this user ({{percent}}% of events)")


def _download_text(row: SentenceInputs) -> str | None:
    base = _first_or_rare(row, row["user_download_share"], "first download for this user",
                          "downloads are rare for this user ({percent}% of events)")
    if base is None or not row["actions_z"] >= MIN_SEVERITY:
        return base
    ratio = _ratio(_per_median(row["events_in_session"], row["user_median_actions"]))
    if ratio is None:
        return None
    return f"{base}, in a session of {row['events_in_session']} actions ({ratio}x usual)"


def _time_of_week_text(row: SentenceInputs) -> str | None:
    day = WEEKDAY_NAMES[min(max(int(row["event_weekday"]), 0), 6)]
    return _first_or_rare(row, row["user_weekday_share"], f"first {day} activity for this user",
                          f"{day} activity is rare for this user ({{percent}}% of events)")


def _global_text(row: SentenceInputs) -> str | None:
    if row["global_by_actions"]:
        return f"{row['events_in_session']} actions in one session is extreme for any user"
    duration = _duration(row["session_duration_sec"])
    return None if duration is None else f"a {duration} session is extreme for any user"


_TEXTS = {
    "hour": _hour_text,
    "session_length": _session_text,
    "actions": _actions_text,
    "device": _device_text,
    "event_type": _event_type_text,
    "download_intensity": _download_text,
    "time_of_week": _time_of_week_text,
    "global": _global_text,
}


def sentences(row: SentenceInputs, kinds: Sequence[str]) -> list[str]:
    """The sentence of each kind for one event (``row`` holds SENTENCE_INPUTS as plain
    values, None or NaN where missing), in the order given."""
    out = []
    for kind in kinds:
        text = _TEXTS[kind](row)
        out.append(kind.replace("_", " ") if text is None else text)
    return out


# ---- ranking ---------------------------------------------------------------------------


def rank_reason_kinds(severity: npt.ArrayLike, max_reasons: int) -> tuple[IndexArray, IndexArray]:
    """For each row, its kinds strongest first and how many of them are listed.

    ``severity`` is (rows, len(REASON_KINDS)) in REASON_KINDS order. A stable sort on the
    negated severities ranks ties in REASON_KINDS order. A row lists the kinds at or
    above ``keep_from = max(min(top, MIN_SEVERITY), MIN_TOP_SEVERITY)``, at most
    ``max_reasons``: every kind from MIN_SEVERITY up, or the single strongest one when
    none reaches it but it reaches MIN_TOP_SEVERITY; none when even the strongest is
    below that. Returns (order: rows x kinds column indices, counts: rows).
    """
    severity = np.asarray(severity, dtype=np.float64).reshape(-1, len(REASON_KINDS))
    order = np.argsort(-severity, axis=1, kind="stable")
    ranked = severity[np.arange(len(severity))[:, None], order]
    top = ranked[:, 0]
    listed = (ranked >= _keep_from(top, ARRAYS)[:, None]).sum(axis=1)
    return order, _listed_count(top, listed, max_reasons, ARRAYS)


def _keep_from(top: Values, xp: Math) -> Values:
    """The lowest severity a row lists, given its strongest one (the rule above)."""
    return xp.maximum(xp.minimum(top, MIN_SEVERITY), MIN_TOP_SEVERITY)


def _listed_count(top: Values, listed: Values, max_reasons: int, xp: Math) -> Values:
    """How many kinds a row lists: those from ``_keep_from`` up, at most ``max_reasons``,
    none when even the strongest is below MIN_TOP_SEVERITY."""
    return xp.where(top >= MIN_TOP_SEVERITY, xp.minimum(listed, max(0, max_reasons)), 0)


def listed_kinds(severity: Sequence[float], max_reasons: int) -> list[str]:
    """``reason_kinds`` of one event from its ``severity_row``: the same rule on plain floats.

    ``sorted`` is stable, as the stable argsort of ``rank_reason_kinds``, so ties keep the
    order of REASON_KINDS there too."""
    order = sorted(range(len(REASON_KINDS)), key=lambda k: -severity[k])
    top = severity[order[0]]
    keep_from = _keep_from(top, FLOATS)
    count = _listed_count(top, sum(1 for value in severity if value >= keep_from), max_reasons, FLOATS)
    return [REASON_KINDS[k] for k in order[:count]]


def reason_kinds(severity: npt.ArrayLike, max_reasons: int) -> list[list[str]]:
    """Each row's listed kinds, strongest first, as plain lists (the single-event path)."""
    order, counts = rank_reason_kinds(severity, max_reasons)
    return [[REASON_KINDS[k] for k in row[:count]] for row, count in zip(order.tolist(), counts.tolist(),
                                                                              strict=True)]


def reason_kinds_column(severity: npt.ArrayLike, max_reasons: int) -> pl.Series:
    """``reason_kinds`` as a List(String) column, ranked by the compiled form of the rule
    (``uba.model.kernel.ranked_kinds``: the listed kinds and their counts, in a few
    nanoseconds a row where the stable argsort and gathers of ``rank_reason_kinds`` cost
    a few hundred); ``tests/test_reasons.py`` holds the two, and ``listed_kinds``, to the
    same answers. ``severity`` is rows x REASON_KINDS, in any memory layout."""
    from uba.model.forest import compiled_kernel  # numba, imported by the batch job's first ranking

    severity = np.asarray(severity, dtype=np.float64).reshape(-1, len(REASON_KINDS))
    listed, counts = compiled_kernel().ranked_kinds(severity, max_reasons, MIN_SEVERITY, MIN_TOP_SEVERITY)
    values = pl.Series(REASON_KINDS, dtype=pl.String).gather(listed).to_arrow()
    offsets = _arrow(np.concatenate([[0], np.cumsum(counts)]).astype(np.int64))
    lists = pa.LargeListArray.from_arrays(offsets, values.cast(pa.large_string()))
    return pl.Series("reason_kinds", pl.from_arrow(lists), dtype=pl.List(pl.String))


# ---- frames (the batch job) ------------------------------------------------------------


def explain(features: pl.LazyFrame | pl.DataFrame, max_reasons: int = 3,
            sentences_for: pl.Expr | None = None) -> pl.LazyFrame:
    """Add ``reasons`` and ``reason_kinds`` (parallel List(String), strongest first).

    ``features`` is the output of ``uba.features.events.event_features`` (the feature
    and context columns are what is read); row order is kept. The kinds are ranked with
    array arithmetic and given to every row: suppression rules and analysts' filters
    match on them. Sentences cost far more than the kinds, so they are built only where
    someone reads them: with ``sentences_for`` (a boolean expression, the batch job
    passes ``is_anomaly``) the other rows get a null ``reasons``; without it every row
    gets its sentences.
    """
    frame = features.collect() if isinstance(features, pl.LazyFrame) else features
    kinds = rank_frame(frame, max_reasons)
    readers = (np.ones(frame.height, dtype=bool) if sentences_for is None
               else frame.select(sentences_for.fill_null(False)).to_series().to_numpy().astype(bool))
    return frame.with_columns(kinds, phrase_frame(frame, kinds, readers)).lazy()


def rank_frame(frame: pl.DataFrame, max_reasons: int) -> pl.Series:
    """``reason_kinds`` of every row of a feature frame (``severity_matrix`` + ranking)."""
    values = {name: frame[name].cast(pl.Float64).to_numpy() for name in SEVERITY_INPUTS}
    is_download = (frame["event_type"].cast(pl.String) == DOWNLOAD).fill_null(False).to_numpy()
    return reason_kinds_column(_severities_by_kind(values, is_download).T, max_reasons)


def phrase_frame(frame: pl.DataFrame, kinds: pl.Series, readers: npt.NDArray[np.bool_]) -> pl.Series:
    """``reasons``: the sentences of the rows someone reads (``readers``) that have kinds;
    ``[]`` for a read row without any, null for the others. Python per phrased row only,
    and once per distinct (inputs, kinds): many flagged events of a shard are exact twins
    (``_twins``; about half of them on the benchmark day), and a sentence depends on
    nothing else."""
    rows = np.flatnonzero(readers & (kinds.list.len().to_numpy() > 0))
    if not rows.size:
        return _spread([], np.zeros(0, dtype=np.intp), rows, readers)
    picked = frame.select(SENTENCE_INPUTS)[rows]
    listed = kinds.gather(rows)
    first, which = _twins(picked, listed)
    phrased = [sentences(row, k) for row, k in zip(_plain_rows(picked[first]), listed.gather(first).to_list(),
                                                    strict=True)]
    return _spread(phrased, which, rows, readers)


def _twins(picked: pl.DataFrame, listed: pl.Series) -> tuple[IndexArray, IndexArray]:
    """Rows with the same inputs and kinds: ``first`` holds the first row of each distinct
    one, ``which`` each row's position in ``first``.

    Floats are compared by their bits (a NaN is its own twin, -0.0 and 0.0 are not twins:
    Polars alone would equate both pairs) and a null apart from any value, so twins are
    rows whose sentences cannot differ, whatever a text does with its values. Polars ranks
    the rows as structs (compared value for value); a Python dict of row tuples cost as
    much as the sentences it saved."""
    keys: list[pl.Series] = []
    nulls = np.zeros(picked.height, dtype=np.int64)
    for i, column in enumerate(picked.iter_columns()):
        if column.dtype.is_float():
            if column.null_count():
                nulls |= column.is_null().to_numpy().astype(np.int64) << i
            keys.append(pl.Series(column.name, column.cast(pl.Float64).to_numpy().view(np.int64)))
        else:
            keys.append(column)
    keys += [pl.Series("_nulls", nulls), listed.alias("_kinds")]
    group = pl.DataFrame(keys).select(pl.struct(pl.all()).rank("dense")).to_series().to_numpy().astype(np.intp) - 1
    order = np.argsort(group, kind="stable")
    starts = np.flatnonzero(np.diff(group[order], prepend=-1))
    return order[starts], group


def _plain_rows(picked: pl.DataFrame) -> list[SentenceInputs]:
    """The rows as plain Python values of their columns' dtypes (what ``to_dicts`` gives,
    at a fraction of its cost): the shape SentenceInputs names."""
    names = picked.columns
    values = [column.to_list() for column in picked.iter_columns()]
    return [cast(SentenceInputs, dict(zip(names, row, strict=True))) for row in zip(*values, strict=True)]


def _spread(phrased: list[list[str]], which: IndexArray, rows: IndexArray,
            readers: npt.NDArray[np.bool_]) -> pl.Series:
    """The full ``reasons`` column: the sentences of listed row ``rows[i]`` are
    ``phrased[which[i]]``, at its position; ``[]`` for a row someone reads but that has no
    reason, null for a row nobody reads.

    Built from one flat column of the distinct sentences, gathered by offsets: a
    List(String) Series built from nested Python lists costs a Series per row (most of the
    reasons' time in a shard)."""
    counts = np.array([len(texts) for texts in phrased], dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(counts)])[:-1]
    lengths = np.zeros(len(readers), dtype=np.int64)
    lengths[rows] = counts[which]
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    # text j of row i sits at starts[which[i]] + j of the flat distinct texts
    each = np.repeat(starts[which] - offsets[rows], counts[which]) + np.arange(offsets[-1])
    texts = pl.Series([text for texts in phrased for text in texts], dtype=pl.String).gather(each)
    lists = pa.LargeListArray.from_arrays(_arrow(offsets), texts.to_arrow().cast(pa.large_string()),
                                          mask=_arrow(~readers))
    return pl.Series("reasons", pl.from_arrow(lists), dtype=pl.List(pl.String))


def _arrow(values: np.ndarray) -> pa.Array:
    """A numpy array as Arrow through Polars: ``pa.array`` imports pandas on first use
    (about 0.5 s per worker process, paid by every shard worker's first shard)."""
    return pl.Series(values).to_arrow()
