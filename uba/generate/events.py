"""Expansion of sessions into events (login, actions, logout) and their labels.

Vectorised over all events at once: row ``i`` knows its session by ``np.repeat`` and
its position in the session by subtracting the session's first row, so there is no
per-event (or per-session) Python loop.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from uba.generate.anomalies import ANOMALY_KINDS, USER_DAY_KINDS
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
    return within / np.maximum(total, 1e-12)[session]


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


def _kind_names() -> pl.Series:
    return pl.Series("kind", [None, *ANOMALY_KINDS], dtype=pl.String)


def expand_sessions(
    sessions: Sessions, users: Users, id_prefix: str, rng: np.random.Generator
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Events in ``EVENT_SCHEMA`` (sorted by time, ids in that order) and their labels."""
    n = sessions.n_events.astype(np.int64)
    session = np.repeat(np.arange(len(sessions), dtype=np.int64), n)
    first_row = np.cumsum(n) - n
    position = np.arange(session.size, dtype=np.int64) - first_row[session]
    last_mask = position == n[session] - 1
    fractions = _in_session_fractions(position, first_row, session, last_mask, rng)
    timestamp = sessions.start_us[session] + np.round(
        fractions * sessions.duration_sec[session] * US_PER_SEC
    ).astype(np.int64)
    event_type = _event_types(position, last_mask, session, sessions, rng)

    order = np.lexsort((position, session, timestamp))
    session, timestamp, event_type = session[order], timestamp[order], event_type[order]
    width = max(8, len(str(session.size)))
    row = pl.Series("row", np.arange(session.size, dtype=np.int64))
    event_id = (pl.lit(f"e{id_prefix}-") + row.cast(pl.String).str.zfill(width)).alias("event_id")
    session_names = (
        pl.lit(f"s{id_prefix}-") + pl.Series(np.arange(len(sessions), dtype=np.int64)).cast(pl.String).str.zfill(7)
    )
    session_ids = pl.select(session_names).to_series()
    names = pl.Series(user_ids(users.count))
    idx = pl.Series(session)
    user_of_row = pl.Series(sessions.user[session])
    day_number = np.floor_divide(timestamp, US_PER_DAY)

    events = pl.DataFrame(
        {
            "row": row,
            "user_id": names.gather(user_of_row),
            "timestamp": pl.Series(timestamp).cast(pl.Datetime("us")).dt.replace_time_zone("UTC"),
            "event_type": pl.Series(EVENT_TYPES).gather(pl.Series(event_type.astype(np.int64))),
            "session_duration_sec": sessions.duration_sec[session],
            "events_in_session": n[session],
            "device_type": pl.Series(DEVICES).gather(pl.Series(sessions.mobile[session].astype(np.int64))),
            "hour_of_day": np.floor_divide(np.mod(timestamp, US_PER_DAY), US_PER_HOUR).astype(np.int8),
            "day_of_week": ((day_number + EPOCH_WEEKDAY) % 7).astype(np.int8),
            "session_id": session_ids.gather(idx),
        }
    ).with_columns(event_id)
    events = events.select(list(EVENT_SCHEMA)).cast(EVENT_SCHEMA)

    kind_code = sessions.kind[session].astype(np.int64)
    kind = _kind_names().gather(pl.Series(kind_code))
    level = pl.Series(["", "event", "user_day"], dtype=pl.String)
    level_code = np.where(kind_code == 0, 0, np.where(np.isin(kind_code, _user_day_codes()), 2, 1))
    labels = pl.DataFrame(
        {
            "event_id": events["event_id"],
            "user_id": events["user_id"],
            "session_id": events["session_id"],
            "event_date": events["timestamp"].dt.date(),
            "is_anomaly": kind_code > 0,
            "kind": kind,
            "level": level.gather(pl.Series(level_code)).replace("", None),
        }
    ).cast(LABEL_SCHEMA)
    return events, labels


def _user_day_codes() -> list[int]:
    return [ANOMALY_KINDS.index(k) + 1 for k in USER_DAY_KINDS]
