"""Expansion of sessions into events (login, actions, logout) and their labels.

Vectorised over all events at once: row ``i`` knows its session by ``np.repeat`` and
its position in the session by subtracting the session's first row, so there is no
per-event (or per-session) Python loop.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import polars as pl

from uba.generate.anomalies import ANOMALY_KINDS, CAMPAIGN_KINDS, USER_DAY_KINDS, kind_code
from uba.generate.personas import Users, user_ids
from uba.generate.sessions import US_PER_DAY, US_PER_HOUR, US_PER_SEC, Sessions
from uba.schema import EVENT_SCHEMA

EVENT_TYPES: tuple[str, ...] = ("login", "logout", "view", "click", "download")
LOGIN, LOGOUT, VIEW, CLICK, DOWNLOAD = range(5)
DEVICES: tuple[str, ...] = ("desktop", "mobile")
EPOCH_WEEKDAY = 3  # 1970-01-01 was a Thursday (0 = Monday)

LABEL_SCHEMA: dict[str, pl.DataType] = {
    "event_id": pl.String(),
    "user_id": pl.String(),
    "session_id": pl.String(),
    "event_date": pl.Date(),
    "is_anomaly": pl.Boolean(),
    "kind": pl.String(),
    "level": pl.String(),
}


def _in_session_fractions(position: np.ndarray, first_row: np.ndarray, session: np.ndarray,
                          last: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Sorted uniform times inside each session (login at 0, logout at 1), from
    normalised cumulative exponential gaps: the order statistics without sorting."""
    gaps = rng.exponential(size=position.size)
    gaps[position == 0] = 0.0
    cumulative = np.cumsum(gaps)
    within = cumulative - cumulative[first_row][session]
    total = within[last]  # one value per session, in session order
    fraction: np.ndarray = within / np.maximum(total, 1e-12)[session]
    return fraction


def _forced_download_rows(position: np.ndarray, last: np.ndarray, session: np.ndarray,
                          forced: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Rows that must be downloads: in a session with a fixed download count, that many of
    its actions picked at random (only those few sessions are sorted)."""
    rows = np.flatnonzero((forced[session] >= 0) & (position > 0) & ~last)
    chosen = np.zeros(position.size, dtype=bool)
    if rows.size == 0:
        return chosen
    order = np.lexsort((rng.random(rows.size), session[rows]))
    rows = rows[order]
    owner = session[rows]
    first = np.r_[True, owner[1:] != owner[:-1]]
    rank = np.arange(rows.size) - np.maximum.accumulate(np.where(first, np.arange(rows.size), 0))
    chosen[rows[rank < forced[owner]]] = True
    return chosen


def _event_types(position: np.ndarray, last: np.ndarray, session: np.ndarray,
                 sessions: Sessions, rng: np.random.Generator) -> np.ndarray:
    u = rng.random(position.size)
    v = rng.random(position.size)
    drawn = (u < sessions.p_download[session]) & (sessions.forced_downloads[session] < 0)
    download = drawn | _forced_download_rows(position, last, session, sessions.forced_downloads, rng)
    action = np.where(download, DOWNLOAD, np.where(v < sessions.p_view[session], VIEW, CLICK))
    return np.where(position == 0, LOGIN, np.where(last, LOGOUT, action)).astype(np.int8)


def _numbered(prefix: str, count: int, width: int) -> pl.Series:
    """``prefix`` + zero-padded 0..count-1, built by Polars (fast for millions of ids)."""
    shifted = pl.Series(np.arange(count, dtype=np.int64) + 10**width)  # leading 1 keeps the zeros
    return pl.select(pl.lit(prefix) + shifted.cast(pl.String).str.slice(1)).to_series()


def _lookup(table: Sequence[str | None], codes: np.ndarray) -> pl.Series:
    """Strings for integer codes (a gather, not a Python loop)."""
    return pl.Series(list(table), dtype=pl.String).gather(pl.Series(codes.astype(np.int64)))


def _session_rows(n_events: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """For every event row: its session, the session's first row, its position, is-last."""
    session = np.repeat(np.arange(n_events.size, dtype=np.int64), n_events)
    first_row = np.cumsum(n_events) - n_events
    position = np.arange(session.size, dtype=np.int64) - first_row[session]
    return session, first_row, position, position == n_events[session] - 1


def expand_sessions(
    sessions: Sessions, users: Users, id_prefix: str, rng: np.random.Generator
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Events in ``EVENT_SCHEMA`` (sorted by time, ids in that order) and their labels."""
    sessions = sessions.take(np.lexsort((sessions.user, sessions.start_us)))  # session ids follow time
    n = sessions.n_events.astype(np.int64)
    session, first_row, position, last = _session_rows(n)
    fractions = _in_session_fractions(position, first_row, session, last, rng)
    offset_us = np.round(fractions * sessions.duration_sec[session] * US_PER_SEC).astype(np.int64)
    timestamp = sessions.start_us[session] + offset_us
    event_type = _event_types(position, last, session, sessions, rng)

    order = np.argsort(timestamp, kind="stable")  # rows come in runs already sorted: timsort is cheap
    session, timestamp, event_type = session[order], timestamp[order], event_type[order]
    session_ids = _numbered(f"s{id_prefix}-", len(sessions), 7)
    events = pl.DataFrame(
        {
            "event_id": _numbered(f"e{id_prefix}-", session.size, 8),
            "user_id": pl.Series(user_ids(users.count)).gather(pl.Series(sessions.user[session])),
            "timestamp": pl.Series(timestamp).cast(pl.Datetime("us")).dt.replace_time_zone("UTC"),
            "event_type": _lookup(EVENT_TYPES, event_type),
            "session_duration_sec": sessions.duration_sec[session],
            "events_in_session": n[session],
            "device_type": _lookup(DEVICES, sessions.mobile[session]),
            "hour_of_day": np.floor_divide(np.mod(timestamp, US_PER_DAY), US_PER_HOUR),
            "day_of_week": (np.floor_divide(timestamp, US_PER_DAY) + EPOCH_WEEKDAY) % 7,
            "session_id": session_ids.gather(pl.Series(session)),
        }
    ).cast(pl.Schema(EVENT_SCHEMA))
    return events, _labels(events, labelled_kind(sessions.kind[session], event_type))


def labelled_kind(session_kind: np.ndarray, event_type: np.ndarray) -> np.ndarray:
    """The kind each *event* carries: its session's, except in a download spree or a slow
    exfiltration, where only the downloads are.

    A spree is anomalous through its download rows; its login, logout, view and click
    rows are ordinary events of an ordinary-looking session, and a detector whose
    features are row-local (the product's, by design) cannot and should not flag them.
    Labelling them would count unreachable rows as misses.
    """
    by_downloads = np.isin(session_kind, [kind_code("download_spree"), kind_code("slow_exfiltration")])
    spree_other = by_downloads & (event_type != DOWNLOAD)
    return np.where(spree_other, 0, session_kind).astype(session_kind.dtype)


def _labels(events: pl.DataFrame, kind_code: np.ndarray) -> pl.DataFrame:
    """One label row per event: the anomaly kind of its session and its level."""
    user_day = np.isin(kind_code, [ANOMALY_KINDS.index(k) + 1 for k in USER_DAY_KINDS])
    campaign = np.isin(kind_code, [ANOMALY_KINDS.index(k) + 1 for k in CAMPAIGN_KINDS])
    level_code = np.where(kind_code == 0, 0, np.where(user_day, 2, np.where(campaign, 3, 1)))
    return pl.DataFrame(
        {
            "event_id": events["event_id"],
            "user_id": events["user_id"],
            "session_id": events["session_id"],
            "event_date": events["timestamp"].dt.date(),
            "is_anomaly": kind_code > 0,
            "kind": _lookup([None, *ANOMALY_KINDS], kind_code),
            "level": _lookup([None, "event", "user_day", "campaign"], level_code),
        }
    ).cast(pl.Schema(LABEL_SCHEMA))
