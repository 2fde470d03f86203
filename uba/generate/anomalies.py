"""Labelled anomalies, injected at session level.

Most kinds are *contextual*: the edited session keeps values that are ordinary for the
population (under the event-weighted 99th percentile of the field over normal events)
but unusual for that user, and only modestly so where the kind is a matter of degree:
a burst has 5-10x the user's own median actions per session, a long session lasts 3-6x
the user's own median session; the others are a device they never use, an hour 10+
hours from their usual one, downloads from someone who almost never downloads. A few
``global_extreme`` sessions are the opposite: longer than any normal session, so even a
naive global model sees them.

``exfiltration_day`` is a user-day kind: many small sessions, each unremarkable, that
add up to about 10x the user's usual daily downloads.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from uba.errors import UserError
from uba.generate.personas import DEVICE_HABIT_NAMES, DOWNLOAD_HABITS, Users
from uba.generate.sessions import (
    NORMAL,
    US_PER_DAY,
    US_PER_HOUR,
    US_PER_SEC,
    Sessions,
    draw_sessions,
    inside_window,
)

EVENT_KINDS: tuple[str, ...] = (
    "off_hours",
    "long_session",
    "action_burst",
    "new_device",
    "download_spree",
    "global_extreme",
)
USER_DAY_KINDS: tuple[str, ...] = ("exfiltration_day",)
# multi-day campaigns (uba.generate.campaigns), planted only when asked for
CAMPAIGN_KINDS: tuple[str, ...] = ("slow_exfiltration", "takeover", "insider_drift")
ANOMALY_KINDS: tuple[str, ...] = EVENT_KINDS + USER_DAY_KINDS + CAMPAIGN_KINDS
CONTEXTUAL_KINDS: tuple[str, ...] = EVENT_KINDS[:-1]

# Share of the anomalous *events* each kind receives.
KIND_SHARES: dict[str, float] = {
    "off_hours": 0.20,
    "long_session": 0.20,
    "action_burst": 0.18,
    "new_device": 0.18,
    "download_spree": 0.18,
    "global_extreme": 0.06,
}
# Kinds with the fewest eligible users pick first so they are not starved.
SELECTION_ORDER: tuple[str, ...] = (
    "download_spree", "new_device", "off_hours", "action_burst", "long_session", "global_extreme",
)
# A burst has BURST_FACTOR x the user's own median actions per session, a long session
# lasts LONG_SESSION_FACTOR x their own median session (uniform in each range): unusual
# for the user, yet modest, and only where the value stays under the global ceiling.
BURST_FACTOR = (5.0, 10.0)
LONG_SESSION_FACTOR = (3.0, 6.0)
GLOBAL_CEILING_Q = 0.99  # contextual values stay under this event-weighted global quantile
OFF_HOURS_MAX_SPREAD = 1.8  # only users with tight hours can be "off hours"
OFF_HOURS_MAX_SESSION_H = 2.0
RARE_DOWNLOAD_SHARE = DOWNLOAD_HABITS["rare"][1] + 1e-9
EXFIL_MIN_DOWNLOAD_SHARE = 0.03
EXFIL_DOWNLOAD_FACTOR = 10.0
EXFIL_SESSIONS = (5, 10)
EXFIL_MIN_DOWNLOADS = 5


def kind_code(name: str) -> int:
    """Integer code stored on sessions (0 = normal)."""
    return ANOMALY_KINDS.index(name) + 1


def weighted_quantile(values: np.ndarray, weights: np.ndarray, q: float) -> float:
    """Quantile of a per-event field from per-session values (each session counts once per event)."""
    if values.size == 0:
        return float("nan")
    order = np.argsort(values, kind="stable")
    cumulative = np.cumsum(weights[order])
    position = np.searchsorted(cumulative, q * cumulative[-1])
    return float(values[order][min(position, values.size - 1)])


@dataclass(frozen=True)
class _Context:
    users: Users
    sessions: Sessions
    window_start_us: int
    window_end_us: int
    duration_ceiling: float
    events_ceiling: float
    duration_max: float
    median_duration: np.ndarray  # per user, over their normal sessions (NaN without any)
    median_actions: np.ndarray
    rng: np.random.Generator

    def fits_window(self, start_us: np.ndarray, duration_sec: np.ndarray) -> np.ndarray:
        end_us = start_us + np.round(duration_sec * US_PER_SEC).astype(np.int64)
        return (start_us >= self.window_start_us) & (end_us < self.window_end_us)


Proposal = tuple[np.ndarray, dict[str, np.ndarray]]


def _group_weighted_median(group: np.ndarray, values: np.ndarray, weights: np.ndarray, n_groups: int) -> np.ndarray:
    """Per-group median of ``values`` where each value counts ``weights`` times (NaN for an
    empty group); two sorts instead of materialising one row per value."""
    order = np.lexsort((values, group))
    g, v, w = group[order], values[order], weights[order].astype(np.float64)
    cumulative = np.cumsum(w)
    totals = np.bincount(g, weights=w, minlength=n_groups)
    before = np.r_[0.0, np.cumsum(totals)[:-1]]
    reached = cumulative - before[g] >= totals[g] / 2
    first_group, first_index = np.unique(g[reached], return_index=True)
    median = np.full(n_groups, np.nan)
    median[first_group] = v[np.flatnonzero(reached)[first_index]]
    return median


def user_session_median(user: np.ndarray, values: np.ndarray, n_users: int) -> np.ndarray:
    """Each user's median of a per-session field, every session counted once (their
    typical session); NaN for a user without sessions. The lower median of an even count."""
    return _group_weighted_median(user, values.astype(np.float64), np.ones(user.size), n_users)


def _factor(ctx: _Context, bounds: tuple[float, float]) -> np.ndarray:
    factor: np.ndarray = ctx.rng.uniform(*bounds, len(ctx.sessions))
    return factor


def _propose_long_session(ctx: _Context) -> Proposal:
    s = ctx.sessions
    duration = np.round(ctx.median_duration[s.user] * _factor(ctx, LONG_SESSION_FACTOR), 1)
    known = np.isfinite(duration)  # users without normal sessions have no norm to depart from
    duration = np.where(known, duration, s.duration_sec)
    ok = known & (duration <= ctx.duration_ceiling) & ctx.fits_window(s.start_us, duration)
    return ok, {"duration_sec": duration}


def _propose_action_burst(ctx: _Context) -> Proposal:
    s = ctx.sessions
    own = ctx.median_actions[s.user]
    actions = np.round(own * _factor(ctx, BURST_FACTOR))
    # rounding must not take the burst outside 5-10x (a median of 1.5 actions)
    known = np.isfinite(actions) & (actions >= BURST_FACTOR[0] * own) & (actions <= BURST_FACTOR[1] * own)
    n_events = np.where(known, actions + 2, s.n_events).astype(np.int64)
    return known & (n_events <= ctx.events_ceiling), {"n_events": n_events}


def _propose_off_hours(ctx: _Context) -> Proposal:
    s, u = ctx.sessions, ctx.users
    hour = (u.hour_centre[s.user] + 12.0 + ctx.rng.uniform(-1.0, 1.0, len(s))) % 24.0
    midnight = s.start_us - np.mod(s.start_us, US_PER_DAY)
    start = midnight + np.round(hour * US_PER_HOUR - s.duration_sec / 2 * US_PER_SEC).astype(np.int64)
    ok = (
        (u.hour_spread[s.user] <= OFF_HOURS_MAX_SPREAD)
        & (s.duration_sec <= OFF_HOURS_MAX_SESSION_H * 3600)
        & ctx.fits_window(start, s.duration_sec)
    )
    return ok, {"start_us": start}


def _propose_new_device(ctx: _Context) -> Proposal:
    s, u = ctx.sessions, ctx.users
    single = np.isin(
        u.device_habit[s.user],
        [DEVICE_HABIT_NAMES.index("desktop_only"), DEVICE_HABIT_NAMES.index("mobile_only")],
    )
    return single, {"mobile": ~s.mobile}


def _propose_download_spree(ctx: _Context) -> Proposal:
    s, u = ctx.sessions, ctx.users
    actions = np.maximum(8, np.round(u.actions_median[s.user] * ctx.rng.uniform(1.5, 2.5, len(s))))
    n_events = actions.astype(np.int64) + 2
    ok = (u.download_share[s.user] <= RARE_DOWNLOAD_SHARE) & (n_events <= ctx.events_ceiling)
    return ok, {"n_events": n_events, "p_download": ctx.rng.uniform(0.85, 0.95, len(s))}


def _propose_global_extreme(ctx: _Context) -> Proposal:
    s = ctx.sessions
    duration = np.round(ctx.duration_max * ctx.rng.uniform(2.0, 4.0, len(s)), 1)
    return ctx.fits_window(s.start_us, duration), {"duration_sec": duration}


PROPOSERS: dict[str, Callable[[_Context], Proposal]] = {
    "off_hours": _propose_off_hours,
    "long_session": _propose_long_session,
    "action_burst": _propose_action_burst,
    "new_device": _propose_new_device,
    "download_spree": _propose_download_spree,
    "global_extreme": _propose_global_extreme,
}


def _rank_within_user(user: np.ndarray) -> np.ndarray:
    """0 for a user's first appearance in ``user``, 1 for the second, ..."""
    order = np.argsort(user, kind="stable")
    sorted_user = user[order]
    first = np.r_[True, sorted_user[1:] != sorted_user[:-1]]
    group_start = np.maximum.accumulate(np.where(first, np.arange(user.size), 0))
    rank = np.empty(user.size, dtype=np.int64)
    rank[order] = np.arange(user.size) - group_start
    return rank


def select_sessions(
    eligible: np.ndarray, rows: np.ndarray, user: np.ndarray, quota: float, rng: np.random.Generator
) -> np.ndarray:
    """Random eligible sessions, one per user before any user gets a second, until their
    events reach ``quota`` (a session is taken while its middle event is under quota)."""
    index = np.flatnonzero(eligible)
    if index.size == 0 or quota <= 0:
        return index[:0]
    index = rng.permutation(index)
    index = index[np.argsort(_rank_within_user(user[index]), kind="stable")]
    taken_rows = rows[index]
    cumulative = np.cumsum(taken_rows)
    take = cumulative - taken_rows / 2 <= quota
    take[0] = True
    return index[take]


def inject_event_anomalies(
    sessions: Sessions,
    users: Users,
    rate: float,
    window_start_us: int,
    window_end_us: int,
    min_user_sessions: int,
    rng: np.random.Generator,
) -> Sessions:
    """Turn normal sessions into labelled anomalies until ``rate`` of events are anomalous."""
    if rate <= 0 or len(sessions) == 0:
        return sessions
    inside = inside_window(sessions, window_start_us, window_end_us)
    normal = inside & (sessions.kind == NORMAL)
    if not normal.any():
        return sessions
    weights = sessions.n_events[normal]
    history = np.bincount(sessions.user[normal], minlength=users.count)
    base = normal & ~users.erratic[sessions.user] & (history[sessions.user] >= min_user_sessions)
    total_events = float(sessions.n_events[inside].sum())
    duration_ceiling = weighted_quantile(sessions.duration_sec[normal], weights, GLOBAL_CEILING_Q)
    events_ceiling = weighted_quantile(sessions.n_events[normal], weights, GLOBAL_CEILING_Q)
    duration_max = float(sessions.duration_sec[normal].max())
    for kind in SELECTION_ORDER:
        # the user's own statistics over the sessions still normal: an earlier kind may
        # have edited one of them, and the norm a detector learns is the remaining ones
        normal = inside & (sessions.kind == NORMAL)
        user = sessions.user[normal]
        median_duration = user_session_median(user, sessions.duration_sec[normal], users.count)
        median_actions = user_session_median(user, sessions.n_events[normal] - 2, users.count)
        ctx = _Context(users, sessions, window_start_us, window_end_us, duration_ceiling,
                       events_ceiling, duration_max, median_duration, median_actions, rng)
        ok, changes = PROPOSERS[kind](ctx)
        eligible = base & ok & (sessions.kind == NORMAL)
        rows = labelled_rows(kind, sessions, changes)
        chosen = select_sessions(eligible, rows, sessions.user, KIND_SHARES[kind] * rate * total_events, rng)
        sessions = _apply(sessions, chosen, changes, kind_code(kind))
    return sessions


def labelled_rows(kind: str, sessions: Sessions, changes: dict[str, np.ndarray]) -> np.ndarray:
    """Events of each proposed session that will carry the label (what the rate budgets).

    Every row of an anomalous session is labelled, except in a download spree, where
    only the download rows are (see ``uba.generate.events.labelled_kind``): its budget
    counts the expected downloads, so the labelled share stays near ``rate``.
    """
    rows = changes.get("n_events", sessions.n_events).astype(np.float64)
    if kind == "download_spree":
        downloads: np.ndarray = (rows - 2.0) * changes["p_download"]
        return downloads
    return rows


def _apply(sessions: Sessions, chosen: np.ndarray, changes: dict[str, np.ndarray], code: int) -> Sessions:
    updated = {}
    for name, proposed in changes.items():
        values = getattr(sessions, name).copy()
        values[chosen] = proposed[chosen]
        updated[name] = values
    kind = sessions.kind.copy()
    kind[chosen] = code
    return sessions.with_values(**updated, kind=kind)


def exfiltration_candidates(users: Users) -> np.ndarray:
    """Users whose usual day has some downloads, so "10x usual" is meaningful."""
    usual = users.sessions_per_day * users.actions_median * users.download_share
    return np.flatnonzero(~users.erratic & (users.download_share >= EXFIL_MIN_DOWNLOAD_SHARE) & (usual >= 0.3))


def plan_exfiltration(
    users: Users, start_weekday: int, days: int, count: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Which users get an exfiltration day, and which day: in the second half of the window
    (so there is history before it) and on a day of the week they normally work."""
    candidates = exfiltration_candidates(users)
    if count > candidates.size:
        raise UserError(
            f"--user-day-anomalies {count} is more than the {candidates.size} users who download "
            "regularly enough for an exfiltration day; use more users or fewer user-day anomalies"
        )
    chosen = np.sort(rng.choice(candidates, size=count, replace=False))
    first = days // 2
    window_days = np.arange(first, days)
    weekend = ((start_weekday + window_days) % 7) >= 5
    p_active = np.where(weekend[None, :], users.p_weekend[chosen, None], users.p_weekday[chosen, None])
    score = np.where(p_active >= 0.5, 1.0, 0.0) + rng.random(p_active.shape) * 0.5
    chosen_day = window_days[np.argmax(score, axis=1)]
    return chosen, chosen_day


def exfiltration_sessions(
    users: Users, user: np.ndarray, day: np.ndarray, window_start_us: int, rng: np.random.Generator
) -> Sessions:
    """Many ordinary-looking sessions whose downloads sum to ~10x the user's usual day.

    The day's download total is fixed (not drawn) so "10x" holds for every planted day,
    and it is spread over the sessions in proportion to their actions, so no single
    session is download-heavy for that user.
    """
    spd = users.sessions_per_day[user]
    per_user = np.clip(np.round(4 * spd), *EXFIL_SESSIONS).astype(np.int64)
    mean_actions = users.actions_median[user] * np.exp(users.actions_sigma[user] ** 2 / 2)
    usual = spd * mean_actions * users.download_share[user]
    target = np.maximum(np.round(EXFIL_DOWNLOAD_FACTOR * usual), EXFIL_MIN_DOWNLOADS)
    owner = np.repeat(np.arange(user.size), per_user)
    drawn = draw_sessions(users, user[owner], np.repeat(day, per_user), window_start_us, rng)
    actions = drawn.n_events - 2
    owner_actions = np.bincount(owner, weights=actions, minlength=user.size)
    forced = np.minimum(actions, np.round(target[owner] * actions / owner_actions[owner])).astype(np.int64)
    return drawn.with_values(
        forced_downloads=forced,
        kind=np.full(len(drawn), kind_code("exfiltration_day"), dtype=np.int8),
    )
