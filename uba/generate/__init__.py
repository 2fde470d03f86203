"""Synthetic SaaS activity with per-user personas and labelled anomalies.

Why synthetic: the detector has to be judged against known answers. The data is
built so that a *global* view sees little (most anomalies use values that are common in
the population) while a *per-user* view sees a lot, which is exactly what the
per-user detector is built to exploit. See docs/synthetic-data.md.

Pipeline (all vectorised numpy, no per-event Python loop):
users -> per-day session counts -> sessions -> (exfiltration days) -> no overlaps
-> event-level anomalies -> drift shift -> window filter -> events + labels.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, timedelta

import numpy as np
import polars as pl

from uba.errors import UserError
from uba.generate.anomalies import (
    ANOMALY_KINDS,
    CONTEXTUAL_KINDS,
    EVENT_KINDS,
    KIND_SHARES,
    USER_DAY_KINDS,
    exfiltration_sessions,
    inject_event_anomalies,
    plan_exfiltration,
)
from uba.generate.campaigns import (
    CAMPAIGN_SCHEMA,
    apply_campaigns,
    campaigns_frame,
    ensure_campaign_activity,
    plan_campaigns,
)
from uba.generate.directory import directory_frame
from uba.generate.events import EVENT_TYPES, LABEL_SCHEMA, expand_sessions
from uba.generate.personas import (
    DEFAULT_PERSONA_MIX,
    PERSONA_NAMES,
    PERSONAS,
    check_persona_mix,
    draw_users,
    parse_persona_mix,
    users_frame,
)
from uba.generate.sessions import (
    US_PER_DAY,
    active_session_counts,
    apply_device_shift,
    apply_session_shift,
    drop_normals_overlapping_anomalies,
    epoch_us,
    inside_window,
    separate_overlaps,
    sessions_from_counts,
)

__all__ = [
    "ANOMALY_KINDS",
    "CONTEXTUAL_KINDS",
    "DEFAULT_PERSONA_MIX",
    "EVENT_KINDS",
    "EVENT_TYPES",
    "KIND_SHARES",
    "LABEL_SCHEMA",
    "PERSONAS",
    "PERSONA_NAMES",
    "USER_DAY_KINDS",
    "GenerationOptions",
    "SyntheticData",
    "generate_dataset",
    "generate_events",
    "parse_persona_mix",
]

DEFAULT_SESSION_SCALE = 3.0
DEFAULT_MOBILE_SHIFT = 0.5
MAX_ANOMALY_RATE = 0.2
# Independent random streams: changing one option (e.g. adding exfiltration days) leaves
# the draws of the other stages where they were.
_STREAMS = {"users": 1, "activity": 2, "sessions": 3, "exfiltration_plan": 4, "overlaps": 5,
            "anomalies": 6, "events": 7, "exfiltration_sessions": 8, "device_shift": 9,
            "campaign_plan": 10, "campaigns": 11, "campaign_overlaps": 12,
            "directory": 13}


@dataclass(frozen=True)
class GenerationOptions:
    """Every knob of one generation run (the id prefix is a hash of all of them)."""

    users: int
    days: int
    start: date
    anomaly_rate: float = 0.02
    seed: int = 42
    persona_mix: Mapping[str, float] | None = None
    erratic_users: int = 0
    shift_from: date | None = None
    session_scale: float = DEFAULT_SESSION_SCALE
    user_day_anomalies: int = 0
    device_shift_from: date | None = None
    mobile_shift: float = DEFAULT_MOBILE_SHIFT
    campaigns: int = 0
    campaigns_from: date | None = None

    def check(self) -> None:
        """Reject impossible requests with one line naming the option."""
        if self.users < 1:
            raise UserError(f"--users must be >= 1, got {self.users}")
        if self.days < 1:
            raise UserError(f"--days must be >= 1, got {self.days}")
        room = (date.max - self.start).days + 1
        if self.days > room:
            raise UserError(f"--days {self.days} from --start {self.start.isoformat()} runs past "
                            f"{date.max.isoformat()}, the last representable date (at most {room} days)")
        if not 0 <= self.anomaly_rate <= MAX_ANOMALY_RATE:
            raise UserError(f"--anomaly-rate must be between 0 and {MAX_ANOMALY_RATE}, got {self.anomaly_rate}")
        if self.seed < 0:
            raise UserError(f"--seed must be >= 0, got {self.seed}")
        if not 0 <= self.erratic_users <= self.users:
            raise UserError(f"--erratic-users must be between 0 and --users ({self.users}), got {self.erratic_users}")
        if not 0 < self.session_scale <= 100:
            raise UserError(f"--session-scale must be > 0 and <= 100, got {self.session_scale}")
        if not 0 < self.mobile_shift <= 1:
            raise UserError(f"--mobile-shift must be > 0 and <= 1, got {self.mobile_shift}")
        if self.campaigns < 0:
            raise UserError(f"--campaigns must be >= 0, got {self.campaigns}")
        if self.campaigns_from is not None and not self.start <= self.campaigns_from <= self.last:
            raise UserError(f"--campaigns-from {self.campaigns_from} is outside the generated window "
                            f"{self.start}..{self.last}")
        if self.user_day_anomalies < 0:
            raise UserError(f"--user-day-anomalies must be >= 0, got {self.user_day_anomalies}")

    @property
    def mix(self) -> dict[str, float]:
        return check_persona_mix(self.persona_mix if self.persona_mix is not None else DEFAULT_PERSONA_MIX)

    @property
    def last(self) -> date:
        """Last day of the window (the day after it may be past ``date.max``)."""
        return self.start + timedelta(days=self.days - 1)

    def fingerprint(self) -> str:
        """Short hash of all options: ids are equal for equal runs and differ otherwise, so
        re-generating into the same directory is recognised by ingest as duplicates."""
        text = repr((self.users, self.days, self.start.isoformat(), round(self.anomaly_rate, 12), self.seed,
                     sorted(self.mix.items()), self.erratic_users,
                     self.shift_from.isoformat() if self.shift_from else None,
                     round(self.session_scale, 12), self.user_day_anomalies,
                     *self._device_shift_key(), *self._campaign_key()))
        return hashlib.blake2b(text.encode(), digest_size=5).hexdigest()

    def _campaign_key(self) -> tuple[object, ...]:
        """Empty without campaigns, so runs without them keep the ids they always had."""
        return (self.campaigns, self.first_campaign_day) if self.campaigns else ()

    @property
    def first_campaign_day(self) -> int:
        """Day number campaigns may start from: --campaigns-from, else the last week."""
        if self.campaigns_from is not None:
            return (self.campaigns_from - self.start).days
        return max(self.days - 7, _min_user_sessions(self.days))

    def _device_shift_key(self) -> tuple[object, ...]:
        """Empty without a device shift, so runs without one keep the ids they always had."""
        if self.device_shift_from is None:
            return ()
        return (self.device_shift_from.isoformat(), round(self.mobile_shift, 12))


@dataclass(frozen=True)
class SyntheticData:
    """Events (``EVENT_SCHEMA``), per-event labels and the users' personas."""

    events: pl.DataFrame
    labels: pl.DataFrame
    users: pl.DataFrame
    options: GenerationOptions
    campaigns: pl.DataFrame = field(default_factory=lambda: pl.DataFrame(schema=CAMPAIGN_SCHEMA))
    directory: pl.DataFrame | None = None


def _rng(seed: int, stream: str) -> np.random.Generator:
    return np.random.default_rng([seed, _STREAMS[stream]])


def _min_user_sessions(days: int) -> int:
    """History a user needs before they can carry an injected anomaly (their norm must exist)."""
    return min(6, days)


def generate_dataset(options: GenerationOptions) -> SyntheticData:
    """Generate one run; equal options give identical frames."""
    options.check()
    users = draw_users(options.users, options.mix, options.erratic_users, _rng(options.seed, "users"))
    window_start = epoch_us(options.start)
    window_end = window_start + options.days * US_PER_DAY

    counts = active_session_counts(users, options.start, options.days, _rng(options.seed, "activity"))
    exfil_user, exfil_day = plan_exfiltration(
        users, options.start.weekday(), options.days, options.user_day_anomalies, _rng(options.seed, "exfiltration_plan")
    )
    counts[exfil_user, exfil_day] = 0
    plan = plan_campaigns(users, options.days, options.campaigns, options.first_campaign_day, exfil_user,
                          _rng(options.seed, "campaign_plan"))
    counts = ensure_campaign_activity(counts, plan)
    sessions = sessions_from_counts(users, counts, window_start, _rng(options.seed, "sessions"))
    if exfil_user.size:
        extra = exfiltration_sessions(users, exfil_user, exfil_day, window_start, _rng(options.seed, "exfiltration_sessions"))
        sessions = sessions.concat(extra)
    sessions = separate_overlaps(sessions, _rng(options.seed, "overlaps"))
    sessions = inject_event_anomalies(
        sessions, users, options.anomaly_rate, window_start, window_end,
        _min_user_sessions(options.days), _rng(options.seed, "anomalies"),
    )
    sessions = drop_normals_overlapping_anomalies(sessions)
    if len(plan):
        sessions = apply_campaigns(sessions, users, plan, window_start, _rng(options.seed, "campaigns"))
        sessions = drop_normals_overlapping_anomalies(
            separate_overlaps(sessions, _rng(options.seed, "campaign_overlaps")))
    if options.shift_from is not None:
        sessions = apply_session_shift(sessions, epoch_us(options.shift_from), options.session_scale)
        sessions = separate_overlaps(sessions, _rng(options.seed, "overlaps"))
    if options.device_shift_from is not None:
        sessions = apply_device_shift(sessions, epoch_us(options.device_shift_from), options.mobile_shift,
                                      _rng(options.seed, "device_shift"))
    sessions = sessions.take(np.flatnonzero(inside_window(sessions, window_start, window_end)))
    events, labels = expand_sessions(sessions, users, options.fingerprint(), _rng(options.seed, "events"))
    return SyntheticData(events=events, labels=labels, users=users_frame(users), options=options,
                         campaigns=campaigns_frame(plan, users, options.start),
                         directory=directory_frame(users, _rng(options.seed, "directory")))


def generate_events(
    users: int,
    days: int,
    start: date,
    anomaly_rate: float = 0.02,
    seed: int = 42,
    persona_mix: Mapping[str, float] | None = None,
    *,
    erratic_users: int = 0,
    shift_from: date | None = None,
    session_scale: float = DEFAULT_SESSION_SCALE,
    user_day_anomalies: int = 0,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(events, labels) for ``users`` x ``days`` from ``start``; see :func:`generate_dataset`."""
    data = generate_dataset(
        GenerationOptions(
            users=users, days=days, start=start, anomaly_rate=anomaly_rate, seed=seed,
            persona_mix=persona_mix, erratic_users=erratic_users, shift_from=shift_from,
            session_scale=session_scale, user_day_anomalies=user_day_anomalies,
        )
    )
    return data.events, data.labels
