"""Personas: the population of synthetic users and each user's own habits.

A detector of *contextual* anomalies is only worth testing on data where users really
differ, so every user draws their own parameters (typical hour, session-length
distribution, actions per session, activity rate, device and event-type habits) from
ranges that depend on their persona. All times are UTC: a persona's "working day" is
where it falls on the UTC clock (an APAC office day is 01:00-09:00 UTC).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import polars as pl

from uba.errors import UserError

Range = tuple[float, float]

# Share of a user's sessions on mobile, by device habit (drawn uniformly in the range).
DEVICE_HABITS: dict[str, Range] = {
    "desktop_only": (0.0, 0.0),
    "mixed": (0.25, 0.6),
    "mobile_heavy": (0.7, 0.9),
    "mobile_only": (1.0, 1.0),
}
# Share of a user's in-session actions that are downloads, by download habit.
DOWNLOAD_HABITS: dict[str, Range] = {
    "rare": (0.0, 0.008),
    "normal": (0.03, 0.08),
    "heavy": (0.12, 0.22),
}


@dataclass(frozen=True)
class Persona:
    """Ranges a user of this persona draws their own parameters from."""

    description: str
    hour_centre: Range  # typical session start hour, UTC
    hour_spread: Range  # sd of the start hour, hours
    p_weekday: Range  # chance of being active on a Monday-Friday
    p_weekend: Range  # chance of being active on a Saturday/Sunday
    sessions_per_day: Range  # mean sessions on an active day
    session_median_min: Range  # median session length (desktop), minutes
    session_sigma: Range  # sd of log session length
    actions_median: Range  # median actions between login and logout
    actions_sigma: Range  # sd of log actions
    device_habits: Mapping[str, float] = field(default_factory=dict)
    download_habits: Mapping[str, float] = field(default_factory=dict)


PERSONAS: dict[str, Persona] = {
    "office": Persona(
        "9-to-5 office worker in a UTC-aligned time zone, tight hours, weekdays only",
        hour_centre=(12.0, 14.0), hour_spread=(0.9, 1.4), p_weekday=(0.85, 0.97),
        p_weekend=(0.0, 0.05), sessions_per_day=(1.0, 1.6), session_median_min=(12, 35),
        session_sigma=(0.25, 0.4), actions_median=(2.5, 6), actions_sigma=(0.25, 0.4),
        device_habits={"desktop_only": 0.6, "mixed": 0.3, "mobile_heavy": 0.1},
        download_habits={"rare": 0.4, "normal": 0.5, "heavy": 0.1},
    ),
    "night": Persona(
        "night shift 22:00-06:00 UTC, works some weekends",
        hour_centre=(1.5, 2.5), hour_spread=(0.9, 1.4), p_weekday=(0.8, 0.95),
        p_weekend=(0.25, 0.5), sessions_per_day=(1.0, 1.5), session_median_min=(15, 40),
        session_sigma=(0.25, 0.4), actions_median=(2.5, 6), actions_sigma=(0.25, 0.4),
        device_habits={"desktop_only": 0.7, "mixed": 0.3},
        download_habits={"rare": 0.4, "normal": 0.5, "heavy": 0.1},
    ),
    "apac": Persona(
        "office worker in Asia-Pacific: working day 01:00-09:00 UTC",
        hour_centre=(4.5, 5.5), hour_spread=(0.9, 1.5), p_weekday=(0.85, 0.97),
        p_weekend=(0.0, 0.05), sessions_per_day=(1.0, 1.6), session_median_min=(12, 35),
        session_sigma=(0.25, 0.4), actions_median=(2.5, 6), actions_sigma=(0.25, 0.4),
        device_habits={"desktop_only": 0.55, "mixed": 0.3, "mobile_heavy": 0.15},
        download_habits={"rare": 0.4, "normal": 0.5, "heavy": 0.1},
    ),
    "weekend": Persona(
        "weekend worker (retail, support): Saturdays and Sundays, occasional weekday",
        hour_centre=(13.0, 16.0), hour_spread=(1.3, 2.0), p_weekday=(0.05, 0.2),
        p_weekend=(0.85, 0.97), sessions_per_day=(1.5, 2.5), session_median_min=(10, 30),
        session_sigma=(0.3, 0.45), actions_median=(3, 7), actions_sigma=(0.3, 0.45),
        device_habits={"mixed": 0.5, "mobile_heavy": 0.3, "mobile_only": 0.2},
        download_habits={"rare": 0.5, "normal": 0.5},
    ),
    "power": Persona(
        "heavy user: long days, many long sessions, many actions, downloads a lot",
        hour_centre=(12.5, 14.5), hour_spread=(2.2, 3.0), p_weekday=(0.92, 1.0),
        p_weekend=(0.3, 0.6), sessions_per_day=(2.0, 3.0), session_median_min=(30, 70),
        session_sigma=(0.3, 0.45), actions_median=(6, 11), actions_sigma=(0.3, 0.4),
        device_habits={"desktop_only": 0.5, "mixed": 0.5},
        download_habits={"normal": 0.4, "heavy": 0.6},
    ),
    "light": Persona(
        "light user: a short, mostly mobile check-in now and then, wide hours",
        hour_centre=(9.0, 19.0), hour_spread=(2.0, 3.0), p_weekday=(0.25, 0.5),
        p_weekend=(0.1, 0.3), sessions_per_day=(1.0, 1.3), session_median_min=(3, 10),
        session_sigma=(0.3, 0.5), actions_median=(1.5, 3.5), actions_sigma=(0.3, 0.5),
        device_habits={"mixed": 0.3, "mobile_heavy": 0.4, "mobile_only": 0.3},
        download_habits={"rare": 0.7, "normal": 0.3},
    ),
    "erratic": Persona(
        "naturally noisy user: any hour, very variable sessions (only via --erratic-users "
        "or an explicit mix; never given injected anomalies)",
        hour_centre=(0.0, 24.0), hour_spread=(5.0, 7.0), p_weekday=(0.55, 0.8),
        p_weekend=(0.4, 0.7), sessions_per_day=(1.5, 2.5), session_median_min=(10, 40),
        session_sigma=(0.9, 1.1), actions_median=(3, 8), actions_sigma=(0.8, 1.0),
        device_habits={"mixed": 1.0},
        download_habits={"normal": 0.6, "heavy": 0.4},
    ),
}

DEFAULT_PERSONA_MIX: dict[str, float] = {
    "office": 0.42, "night": 0.12, "apac": 0.14, "weekend": 0.08, "power": 0.10, "light": 0.14,
}
ERRATIC = "erratic"
PERSONA_NAMES: tuple[str, ...] = tuple(PERSONAS)
DEVICE_HABIT_NAMES: tuple[str, ...] = tuple(DEVICE_HABITS)
DOWNLOAD_HABIT_NAMES: tuple[str, ...] = tuple(DOWNLOAD_HABITS)


@dataclass(frozen=True)
class Users:
    """Per-user parameters as parallel arrays (index = user number)."""

    persona: np.ndarray  # index into PERSONA_NAMES
    hour_centre: np.ndarray
    hour_spread: np.ndarray
    p_weekday: np.ndarray
    p_weekend: np.ndarray
    sessions_per_day: np.ndarray
    session_median_sec: np.ndarray
    session_sigma: np.ndarray
    actions_median: np.ndarray
    actions_sigma: np.ndarray
    device_habit: np.ndarray  # index into DEVICE_HABIT_NAMES
    mobile_share: np.ndarray
    download_habit: np.ndarray  # index into DOWNLOAD_HABIT_NAMES
    download_share: np.ndarray
    view_share: np.ndarray  # share of views among non-download actions

    @property
    def count(self) -> int:
        return int(self.persona.shape[0])

    @property
    def erratic(self) -> np.ndarray:
        erratic: np.ndarray = self.persona == PERSONA_NAMES.index(ERRATIC)
        return erratic


def parse_persona_mix(text: str) -> dict[str, float]:
    """Parse ``office=0.5,night=0.2`` so the CLI can change the population for out-of-sample runs."""
    mix: dict[str, float] = {}
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        name, sep, raw = item.partition("=")
        if not sep:
            raise UserError(f"persona mix item {item!r} must look like name=weight")
        try:
            mix[name.strip()] = float(raw)
        except ValueError:
            raise UserError(f"persona mix weight for {name.strip()!r} is not a number: {raw!r}") from None
    return check_persona_mix(mix)


def check_persona_mix(mix: Mapping[str, float]) -> dict[str, float]:
    """Validate names and weights and normalise to shares that sum to 1."""
    for name, weight in mix.items():
        if name not in PERSONAS:
            raise UserError(f"unknown persona {name!r} in persona mix (known: {', '.join(PERSONA_NAMES)})")
        if not np.isfinite(weight) or weight < 0:
            raise UserError(f"persona mix weight for {name!r} must be >= 0, got {weight!r}")
    total = float(sum(mix.values()))
    if total <= 0:
        raise UserError("persona mix needs at least one persona with a positive weight")
    return {name: float(weight) / total for name, weight in mix.items()}


def _exact_counts(shares: np.ndarray, total: int) -> np.ndarray:
    """Largest-remainder rounding, so a small population still follows the mix exactly."""
    raw = shares * total
    counts: np.ndarray = np.floor(raw).astype(np.int64)
    short = total - int(counts.sum())
    if short > 0:
        order = np.argsort(-(raw - counts), kind="stable")
        counts[order[:short]] += 1
    return counts


def _draw(rng: np.random.Generator, persona: np.ndarray, attr: str) -> np.ndarray:
    """One uniform draw per user inside that user's persona range (all users always draw,
    so changing one user's persona never shifts another user's values)."""
    lo = np.array([getattr(PERSONAS[name], attr)[0] for name in PERSONA_NAMES])
    hi = np.array([getattr(PERSONAS[name], attr)[1] for name in PERSONA_NAMES])
    u = rng.random(len(persona))
    drawn: np.ndarray = lo[persona] + (hi[persona] - lo[persona]) * u
    return drawn


def draw_rows(rng: np.random.Generator, probabilities: np.ndarray) -> np.ndarray:
    """One category index per row of ``probabilities`` (rows x categories, each summing
    to 1), from one uniform draw per row: rounding never picks past the last category."""
    cumulative = np.cumsum(probabilities, axis=1)
    picks: np.ndarray = np.minimum((rng.random(len(probabilities))[:, None] >= cumulative).sum(axis=1),
                                   probabilities.shape[1] - 1)
    return picks


def _draw_habit(
    rng: np.random.Generator, persona: np.ndarray, attr: str, habits: dict[str, Range]
) -> tuple[np.ndarray, np.ndarray]:
    names = list(habits)
    weights = np.array(
        [[getattr(PERSONAS[p], attr).get(h, 0.0) for h in names] for p in PERSONA_NAMES]
    )
    habit = draw_rows(rng, (weights / weights.sum(axis=1, keepdims=True))[persona])
    lo = np.array([habits[h][0] for h in names])
    hi = np.array([habits[h][1] for h in names])
    share = lo[habit] + (hi[habit] - lo[habit]) * rng.random(len(persona))
    return habit, share


def assign_personas(
    users: int, mix: Mapping[str, float], erratic_users: int, rng: np.random.Generator
) -> np.ndarray:
    """Persona index per user: the mix in exact proportions, shuffled, then ``erratic_users``
    randomly chosen users turned erratic."""
    shares = np.array([mix.get(name, 0.0) for name in PERSONA_NAMES])
    persona = np.repeat(np.arange(len(PERSONA_NAMES)), _exact_counts(shares, users))
    persona = rng.permutation(persona)
    chosen = rng.permutation(users)[:erratic_users]
    persona[chosen] = PERSONA_NAMES.index(ERRATIC)
    return persona


def draw_users(
    users: int, mix: Mapping[str, float], erratic_users: int, rng: np.random.Generator
) -> Users:
    """Every user's own parameters, drawn from their persona's ranges."""
    persona = assign_personas(users, mix, erratic_users, rng)
    device_habit, mobile_share = _draw_habit(rng, persona, "device_habits", DEVICE_HABITS)
    download_habit, download_share = _draw_habit(rng, persona, "download_habits", DOWNLOAD_HABITS)
    return Users(
        persona=persona,
        hour_centre=_draw(rng, persona, "hour_centre") % 24.0,
        hour_spread=_draw(rng, persona, "hour_spread"),
        p_weekday=_draw(rng, persona, "p_weekday"),
        p_weekend=_draw(rng, persona, "p_weekend"),
        sessions_per_day=_draw(rng, persona, "sessions_per_day"),
        session_median_sec=_draw(rng, persona, "session_median_min") * 60.0,
        session_sigma=_draw(rng, persona, "session_sigma"),
        actions_median=_draw(rng, persona, "actions_median"),
        actions_sigma=_draw(rng, persona, "actions_sigma"),
        device_habit=device_habit,
        mobile_share=mobile_share,
        download_habit=download_habit,
        download_share=download_share,
        view_share=rng.uniform(0.45, 0.75, users),
    )


def user_ids(count: int) -> list[str]:
    """``u00042`` style ids, zero-padded wide enough for the population."""
    width = max(5, len(str(max(count - 1, 0))))
    return [f"u{i:0{width}d}" for i in range(count)]


def users_frame(users: Users) -> pl.DataFrame:
    """The users file: persona and true parameters, for evaluation and tests only."""
    return pl.DataFrame(
        {
            "user_id": user_ids(users.count),
            "persona": np.array(PERSONA_NAMES)[users.persona],
            "is_erratic": users.erratic,
            "hour_centre": users.hour_centre,
            "hour_spread": users.hour_spread,
            "p_active_weekday": users.p_weekday,
            "p_active_weekend": users.p_weekend,
            "sessions_per_active_day": users.sessions_per_day,
            "session_median_sec": users.session_median_sec,
            "session_sigma": users.session_sigma,
            "actions_median": users.actions_median,
            "actions_sigma": users.actions_sigma,
            "device_habit": np.array(DEVICE_HABIT_NAMES)[users.device_habit],
            "mobile_share": users.mobile_share,
            "download_habit": np.array(DOWNLOAD_HABIT_NAMES)[users.download_habit],
            "download_share": users.download_share,
            "view_share": users.view_share,
        }
    )
