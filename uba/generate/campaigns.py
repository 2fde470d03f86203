"""Multi-day campaigns: attacks spread thinly over several days, none of whose events is
extreme for its user on its own.

- ``slow_exfiltration``: the user's own sessions download more each day, from about 1.3x
  their usual share on the first day to 3x on the last (4-7 consecutive days).
- ``takeover``: one to three extra sessions a day on the device the user never uses,
  about twelve hours away from their usual start, with ordinary lengths and actions.
- ``insider_drift``: the user's own sessions start later and last longer day by day, up
  to four hours later and twice as long on the last day.

Every event of a campaign session carries the campaign's kind with level ``campaign``;
``campaigns_frame`` lists user, kind, first and last day, for user-level evaluation.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta

import numpy as np
import polars as pl

from uba.errors import UserError
from uba.generate.anomalies import (
    CAMPAIGN_KINDS,
    OFF_HOURS_MAX_SPREAD,
    exfiltration_candidates,
    kind_code,
)
from uba.generate.personas import Users, user_ids
from uba.generate.sessions import NORMAL, US_PER_DAY, US_PER_HOUR, Sessions, draw_sessions

CAMPAIGN_DAYS = (4, 7)  # inclusive range of a campaign's length
EXFIL_FACTOR_MAX = 3.0  # download share on the last day, times the user's usual
MAX_DOWNLOAD_SHARE = 0.9
TAKEOVER_SESSIONS = (1, 3)  # extra sessions per day, inclusive
TAKEOVER_HOUR_OFFSET = 12.0
DRIFT_MAX_HOURS = 4.0  # start this much later on the last day
DRIFT_MAX_STRETCH = 2.0  # and last this many times as long
NEVER = 0.02  # a device share at most this is "never used"


@dataclass(frozen=True)
class CampaignPlan:
    """One row per campaign: the user number, the kind (index into CAMPAIGN_KINDS), the
    first day (day number in the window) and the length in days."""

    user: np.ndarray
    kind: np.ndarray
    first_day: np.ndarray
    days: np.ndarray

    def __len__(self) -> int:
        return int(self.user.shape[0])

    def day_pairs(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(campaign index, user, day, step) for every campaign day; step is 1..length."""
        campaign = np.repeat(np.arange(len(self)), self.days)
        step = np.arange(campaign.size) - np.repeat(np.cumsum(self.days) - self.days, self.days) + 1
        return campaign, self.user[campaign], self.first_day[campaign] + step - 1, step


def _candidates(users: Users, kind: str) -> np.ndarray:
    """Users for whom the campaign is a departure from their own habits."""
    tight = (users.hour_spread <= OFF_HOURS_MAX_SPREAD) & ~users.erratic
    if kind == "slow_exfiltration":
        return exfiltration_candidates(users)
    if kind == "takeover":
        one_device = (users.mobile_share <= NEVER) | (users.mobile_share >= 1 - NEVER)
        return np.flatnonzero(tight & one_device)
    return np.flatnonzero(tight & (users.p_weekday >= 0.5))


def plan_campaigns(users: Users, window_days: int, count: int, first_day: int, taken: np.ndarray,
                   rng: np.random.Generator) -> CampaignPlan:
    """``count`` campaigns, kinds in turn, each on its own user (none of ``taken``), starting
    on or after ``first_day`` and ending inside the window."""
    if count == 0:
        empty = np.zeros(0, dtype=np.int64)
        return CampaignPlan(empty, empty, empty, empty)
    room = window_days - first_day
    if room < CAMPAIGN_DAYS[0]:
        raise UserError(f"--campaigns need at least {CAMPAIGN_DAYS[0]} days from --campaigns-from to the end "
                        f"of the window, there are {max(room, 0)}")
    used = set(int(u) for u in taken)
    user, kind = [], []
    for i in range(count):
        k = i % len(CAMPAIGN_KINDS)
        free = np.array([u for u in _candidates(users, CAMPAIGN_KINDS[k]) if int(u) not in used], dtype=np.int64)
        if free.size == 0:
            raise UserError(f"--campaigns {count}: no user left whose habits suit a {CAMPAIGN_KINDS[k]} "
                            "campaign; use more users or fewer campaigns")
        chosen = int(rng.choice(free))
        used.add(chosen)
        user.append(chosen)
        kind.append(k)
    length = rng.integers(CAMPAIGN_DAYS[0], min(CAMPAIGN_DAYS[1], room) + 1, size=count)
    start = first_day + rng.integers(0, room - length + 1)
    return CampaignPlan(np.array(user, dtype=np.int64), np.array(kind, dtype=np.int64), start.astype(np.int64),
                        length.astype(np.int64))


def ensure_campaign_activity(counts: np.ndarray, plan: CampaignPlan) -> np.ndarray:
    """A campaign day is a day the user is active (a slow exfiltration needs sessions to
    download in, a drifting insider sessions to drift)."""
    _, user, day, _ = plan.day_pairs()
    counts = counts.copy()
    counts[user, day] = np.maximum(counts[user, day], 1)
    return counts


def _campaign_of_session(sessions: Sessions, plan: CampaignPlan) -> tuple[np.ndarray, np.ndarray]:
    """For each session: the index of the campaign it falls in (-1 for none) and the step."""
    index = np.full(len(sessions), -1, dtype=np.int64)
    step = np.zeros(len(sessions), dtype=np.int64)
    campaign, user, day, steps = plan.day_pairs()
    for c, u, d, s in zip(campaign, user, day, steps, strict=True):
        hit = (sessions.user == u) & (sessions.day == d) & (sessions.kind == NORMAL)
        index[hit], step[hit] = c, s
    return index, step


def _slow_exfiltration(sessions: Sessions, users: Users, chosen: np.ndarray, fraction: np.ndarray) -> Sessions:
    actions = sessions.n_events[chosen] - 2
    factor = 1.0 + (EXFIL_FACTOR_MAX - 1.0) * fraction
    share = np.minimum(users.download_share[sessions.user[chosen]] * factor, MAX_DOWNLOAD_SHARE)
    forced = sessions.forced_downloads.copy()
    forced[chosen] = np.minimum(actions, np.maximum(np.round(actions * share), 1)).astype(np.int64)
    kind = sessions.kind.copy()
    kind[chosen] = kind_code("slow_exfiltration")
    return sessions.with_values(forced_downloads=forced, kind=kind)


def _insider_drift(sessions: Sessions, users: Users, chosen: np.ndarray, fraction: np.ndarray) -> Sessions:
    del users  # the same signature as the other edits
    start = sessions.start_us.copy()
    start[chosen] += np.round(DRIFT_MAX_HOURS * fraction * US_PER_HOUR).astype(np.int64)
    duration = sessions.duration_sec.copy()
    duration[chosen] = np.round(duration[chosen] * (1.0 + (DRIFT_MAX_STRETCH - 1.0) * fraction), 1)
    kind = sessions.kind.copy()
    kind[chosen] = kind_code("insider_drift")
    return sessions.with_values(start_us=start, duration_sec=duration, kind=kind)


def _takeover_sessions(users: Users, plan: CampaignPlan, window_start_us: int,
                       rng: np.random.Generator) -> Sessions | None:
    campaign, user, day, _ = plan.day_pairs()
    mine = plan.kind[campaign] == CAMPAIGN_KINDS.index("takeover")
    if not mine.any():
        return None
    user, day = user[mine], day[mine]
    per_day = rng.integers(TAKEOVER_SESSIONS[0], TAKEOVER_SESSIONS[1] + 1, size=user.size)
    user, day = np.repeat(user, per_day), np.repeat(day, per_day)
    drawn = draw_sessions(users, user, day, window_start_us, rng)
    hour = np.mod(users.hour_centre[user] + TAKEOVER_HOUR_OFFSET + rng.uniform(-1.0, 1.0, user.size), 24.0)
    start = window_start_us + day * US_PER_DAY + np.round(hour * US_PER_HOUR).astype(np.int64)
    return drawn.with_values(start_us=start, mobile=users.mobile_share[user] < 0.5,
                             kind=np.full(user.size, kind_code("takeover"), dtype=np.int8))


def apply_campaigns(sessions: Sessions, users: Users, plan: CampaignPlan, window_start_us: int,
                    rng: np.random.Generator) -> Sessions:
    """Edit the campaign users' ordinary sessions on campaign days, and add the takeover
    sessions. Sessions already carrying an injected anomaly are left as they are."""
    if len(plan) == 0:
        return sessions
    index, step = _campaign_of_session(sessions, plan)
    fraction = np.where(index >= 0, step / np.maximum(plan.days[np.maximum(index, 0)], 1), 0.0)
    for name, edit in (("slow_exfiltration", _slow_exfiltration), ("insider_drift", _insider_drift)):
        chosen = np.flatnonzero((index >= 0) & (plan.kind[np.maximum(index, 0)] == CAMPAIGN_KINDS.index(name)))
        if chosen.size:
            sessions = edit(sessions, users, chosen, fraction[chosen])
    extra = _takeover_sessions(users, plan, window_start_us, rng)
    return sessions if extra is None else sessions.concat(extra)


def campaigns_frame(plan: CampaignPlan, users: Users, start: date) -> pl.DataFrame:
    """user_id, kind, start, end (inclusive) of every planted campaign."""
    ids = user_ids(users.count)
    return pl.DataFrame(
        {
            "user_id": [ids[u] for u in plan.user.tolist()],
            "kind": [CAMPAIGN_KINDS[k] for k in plan.kind.tolist()],
            "start": [start + timedelta(days=int(d)) for d in plan.first_day.tolist()],
            "end": [start + timedelta(days=int(d + n - 1)) for d, n in zip(plan.first_day.tolist(),
                                                                           plan.days.tolist(), strict=True)],
        },
        schema=CAMPAIGN_SCHEMA,
    ).sort("start", "user_id")


CAMPAIGN_SCHEMA: dict[str, pl.DataType] = {"user_id": pl.String(), "kind": pl.String(), "start": pl.Date(),
                                           "end": pl.Date()}
