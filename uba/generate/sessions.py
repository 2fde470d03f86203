"""Sessions: one row per login-to-logout visit, drawn from each user's own habits.

Everything is generated at session level first (a few arrays of length "sessions") and
only expanded to events at the end, so anomalies can be injected by editing a handful
of session attributes and the cost stays linear in the number of events.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from datetime import UTC, date, datetime

import numpy as np
import polars as pl

from uba.generate.personas import Users

US_PER_SEC = 1_000_000
US_PER_HOUR = 3600 * US_PER_SEC
US_PER_DAY = 24 * US_PER_HOUR
MIN_SESSION_SEC = 10.0
MAX_NORMAL_SESSION_SEC = 6 * 3600.0  # normal sessions are capped; longer ones are anomalies
MAX_NORMAL_ACTIONS = 150
MOBILE_SESSION_FACTOR = 0.7  # mobile visits are shorter than desktop ones
ACTIONS_DURATION_CORR = 0.5  # longer sessions tend to have more actions
GAP_MINUTES = (2.0, 30.0)  # pause between two sessions of the same user
NORMAL = 0


@dataclass(frozen=True)
class Sessions:
    """Parallel session arrays; ``kind`` is 0 for normal or an index into ANOMALY_KINDS + 1."""

    user: np.ndarray  # int64 user number
    day: np.ndarray  # int64 day number within the window
    start_us: np.ndarray  # int64 epoch microseconds, UTC
    duration_sec: np.ndarray  # float64
    n_events: np.ndarray  # int64, login + actions + logout (>= 3)
    mobile: np.ndarray  # bool
    p_download: np.ndarray  # chance that an action is a download
    p_view: np.ndarray  # chance that a non-download action is a view
    kind: np.ndarray  # int8
    forced_downloads: np.ndarray  # int64 exact number of downloads, or -1 to draw with p_download

    def __len__(self) -> int:
        return int(self.user.shape[0])

    def take(self, index: np.ndarray) -> Sessions:
        return Sessions(**{f.name: getattr(self, f.name)[index] for f in fields(self)})

    def concat(self, other: Sessions) -> Sessions:
        return Sessions(
            **{f.name: np.concatenate([getattr(self, f.name), getattr(other, f.name)]) for f in fields(self)}
        )

    def with_values(self, **changes: np.ndarray) -> Sessions:
        return replace(self, **changes)

    @property
    def end_us(self) -> np.ndarray:
        return self.start_us + np.round(self.duration_sec * US_PER_SEC).astype(np.int64)


def epoch_us(day: date) -> int:
    """Microseconds since the epoch at 00:00 UTC of ``day``."""
    moment = datetime(day.year, day.month, day.day, tzinfo=UTC)
    return int(moment.timestamp()) * US_PER_SEC


def day_of_week(start: date, days: int) -> np.ndarray:
    """0=Monday..6 for each day of the window."""
    return (start.weekday() + np.arange(days)) % 7


def active_session_counts(users: Users, start: date, days: int, rng: np.random.Generator) -> np.ndarray:
    """Sessions per user per day (users x days): weekday/weekend rhythm, then a Poisson
    number of extra sessions on an active day."""
    weekend = day_of_week(start, days) >= 5
    p_active = np.where(weekend[None, :], users.p_weekend[:, None], users.p_weekday[:, None])
    active = rng.random(p_active.shape) < p_active
    extra_mean = np.broadcast_to(np.maximum(users.sessions_per_day - 1.0, 0.0)[:, None], p_active.shape)
    extra = rng.poisson(extra_mean)
    return np.where(active, 1 + extra, 0).astype(np.int64)


def draw_sessions(
    users: Users, user: np.ndarray, day: np.ndarray, window_start_us: int, rng: np.random.Generator
) -> Sessions:
    """One session per (user, day) pair given, from that user's own distributions."""
    n = user.shape[0]
    start_hour = users.hour_centre[user] + users.hour_spread[user] * rng.standard_normal(n)
    start_us = window_start_us + day * US_PER_DAY + np.round(start_hour * US_PER_HOUR).astype(np.int64)
    mobile = rng.random(n) < users.mobile_share[user]
    z_duration = rng.standard_normal(n)
    duration = np.exp(np.log(users.session_median_sec[user]) + users.session_sigma[user] * z_duration)
    duration = np.where(mobile, duration * MOBILE_SESSION_FACTOR, duration)
    duration = np.clip(duration, MIN_SESSION_SEC, MAX_NORMAL_SESSION_SEC)
    z_actions = ACTIONS_DURATION_CORR * z_duration + np.sqrt(1 - ACTIONS_DURATION_CORR**2) * rng.standard_normal(n)
    actions = np.exp(np.log(users.actions_median[user]) + users.actions_sigma[user] * z_actions)
    actions = np.clip(np.round(actions), 1, MAX_NORMAL_ACTIONS).astype(np.int64)
    return Sessions(
        user=user.astype(np.int64),
        day=day.astype(np.int64),
        start_us=start_us,
        duration_sec=np.round(duration, 1),
        n_events=actions + 2,
        mobile=mobile,
        p_download=users.download_share[user].astype(np.float64),
        p_view=users.view_share[user].astype(np.float64),
        kind=np.zeros(n, dtype=np.int8),
        forced_downloads=np.full(n, -1, dtype=np.int64),
    )


def sessions_from_counts(
    users: Users, counts: np.ndarray, window_start_us: int, rng: np.random.Generator
) -> Sessions:
    """Expand a users x days count grid into drawn sessions."""
    flat = counts.ravel()
    n_users, n_days = counts.shape
    user = np.repeat(np.repeat(np.arange(n_users), n_days), flat)
    day = np.repeat(np.tile(np.arange(n_days), n_users), flat)
    return draw_sessions(users, user, day, window_start_us, rng)


def _rank_in_group(group: np.ndarray) -> np.ndarray:
    """0, 1, 2, ... along each run of equal values of an already grouped array."""
    first = np.r_[True, group[1:] != group[:-1]]
    return np.arange(group.size) - np.maximum.accumulate(np.where(first, np.arange(group.size), 0))


def separate_overlaps(sessions: Sessions, rng: np.random.Generator) -> Sessions:
    """Push each of a user's sessions after the end of their previous one (plus a pause).

    A person logs in again after logging out; overlapping visits would make "sessions
    per day" meaningless. The loop runs over the rank of a session in its user's
    timeline, each step vectorised over all users that have a session of that rank.
    """
    if len(sessions) == 0:
        return sessions
    s = sessions.take(np.lexsort((sessions.start_us, sessions.user)))
    rank = _rank_in_group(s.user)
    start = s.start_us.copy()
    duration_us = np.round(s.duration_sec * US_PER_SEC).astype(np.int64)
    gap_us = np.round(rng.uniform(*GAP_MINUTES, len(s)) * 60 * US_PER_SEC).astype(np.int64)
    by_rank = np.argsort(rank, kind="stable")
    bounds = np.searchsorted(rank[by_rank], np.arange(1, int(rank.max()) + 2))
    for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
        idx = by_rank[lo:hi]
        start[idx] = np.maximum(start[idx], start[idx - 1] + duration_us[idx - 1] + gap_us[idx])
    return s.with_values(start_us=start)


def drop_normals_overlapping_anomalies(sessions: Sessions) -> Sessions:
    """A user inside a (moved or lengthened) anomalous session is not also in a normal one:
    drop normal sessions that overlap an anomaly of the same user, and an anomaly that
    overlaps an earlier anomaly."""
    if len(sessions) == 0:
        return sessions
    lowest, highest = np.iinfo(np.int64).min, np.iinfo(np.int64).max
    frame = pl.DataFrame({
        "i": np.arange(len(sessions)), "user": sessions.user, "start": sessions.start_us,
        "end": sessions.end_us, "anomaly": sessions.kind != NORMAL,
    }).sort("user", "start", "i")
    anomaly_end = pl.when("anomaly").then("end").otherwise(lowest)
    anomaly_start = pl.when("anomaly").then("start").otherwise(highest)
    frame = frame.with_columns(
        anomaly_end.cum_max().shift(1, fill_value=lowest).over("user").alias("prev_anomaly_end"),
        anomaly_start.cum_min(reverse=True).shift(-1, fill_value=highest).over("user").alias("next_anomaly_start"),
    )
    overlaps_earlier = pl.col("start") < pl.col("prev_anomaly_end")
    overlaps_later = pl.col("end") > pl.col("next_anomaly_start")
    keep = frame.filter(
        pl.when("anomaly").then(~overlaps_earlier).otherwise(~overlaps_earlier & ~overlaps_later)
    )["i"].sort().to_numpy()
    return sessions.take(keep)


def inside_window(sessions: Sessions, window_start_us: int, window_end_us: int) -> np.ndarray:
    """Sessions that start and end inside the generated window (others would spill into
    dates the user did not ask for)."""
    return (sessions.start_us >= window_start_us) & (sessions.end_us < window_end_us)


def apply_session_shift(sessions: Sessions, shift_from_us: int, scale: float) -> Sessions:
    """Drift: from ``shift_from`` every session lasts ``scale`` times longer."""
    shifted = sessions.start_us >= shift_from_us
    duration = np.where(shifted, np.round(sessions.duration_sec * scale, 1), sessions.duration_sec)
    return sessions.with_values(duration_sec=duration)


def apply_device_shift(sessions: Sessions, shift_from_us: int, share: float, rng: np.random.Generator) -> Sessions:
    """Drift: from ``shift_from`` a ``share`` of the desktop sessions happen on mobile instead.

    A population-wide change of habit (a new mobile app, a hardware refresh) that no
    single user's baseline has seen: the drift monitor must call it, per-event scoring
    alone would only see many slightly unusual sessions.
    """
    moved = (sessions.start_us >= shift_from_us) & ~sessions.mobile & (rng.random(len(sessions)) < share)
    return sessions.with_values(mobile=sessions.mobile | moved)
