"""The generated population's user directory: departments and roles whose habits differ.

A department follows from the persona (the night shift is operations, the APAC team is
support-apac, power users are engineering...), so a department's users share their
hours, devices and session habits, which is what peer groups rely on. Roles are drawn
within the department, and habits differ by role too: admins are mostly at a desk and
download more, managers are more often on mobile, keep shorter sessions and download
less. The role is drawn given the user's habits (``ROLE_AFFINITY``), from the separate
"directory" random stream, so generating with or without ``--directory`` gives the same
events. Admins are privileged and critical, managers highly critical.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from uba.generate.personas import (
    DEVICE_HABIT_NAMES,
    DOWNLOAD_HABIT_NAMES,
    PERSONA_NAMES,
    Users,
    draw_rows,
    user_ids,
)

# persona -> (departments it staffs, roles in them with their shares)
DEPARTMENTS: dict[str, tuple[str, ...]] = {
    "office": ("finance", "sales"),
    "night": ("operations",),
    "apac": ("support-apac",),
    "weekend": ("retail",),
    "power": ("engineering",),
    "light": ("marketing",),
    "erratic": ("contractors",),
}
ROLES: dict[str, float] = {"analyst": 0.72, "manager": 0.2, "admin": 0.08}
CRITICALITY_BY_ROLE = {"analyst": "medium", "manager": "high", "admin": "critical"}
# How much likelier than its share a role is for a user with a habit (1 = no preference):
# admins at a desk and downloading, managers on mobile with short sessions and few downloads.
ROLE_AFFINITY: dict[str, dict[str, float]] = {
    "admin": {"desktop_only": 3.0, "mobile_heavy": 0.3, "mobile_only": 0.2, "heavy": 3.0, "rare": 0.4},
    "manager": {"desktop_only": 0.4, "mobile_heavy": 3.0, "mobile_only": 3.0, "heavy": 0.3,
                "short_sessions": 2.0},
}


def directory_frame(users: Users, rng: np.random.Generator) -> pl.DataFrame:
    """One directory row per user (the columns of ``uba.directory``)."""
    personas = [PERSONA_NAMES[p] for p in users.persona.tolist()]
    department = [DEPARTMENTS[p][int(rng.integers(len(DEPARTMENTS[p])))] for p in personas]
    role = _roles(users, rng)
    return pl.DataFrame({
        "user_id": user_ids(users.count),
        "department": department,
        "role": role,
        "is_privileged": [r == "admin" for r in role],
        "criticality": [CRITICALITY_BY_ROLE[r] for r in role],
    })


def _roles(users: Users, rng: np.random.Generator) -> list[str]:
    """Each user's role, weighted by ``ROLE_AFFINITY`` for their habits so each role's
    users behave alike, then rescaled per role so the population keeps the ``ROLES``
    shares (without it desk-bound admins doubled); one uniform draw per user."""
    names = list(ROLES)
    shares = np.array(list(ROLES.values()))
    weights = np.tile(shares, (users.count, 1))
    traits = _habit_traits(users)
    for column, name in enumerate(names):
        for trait, factor in ROLE_AFFINITY.get(name, {}).items():
            weights[traits[trait], column] *= factor
    for _ in range(50):  # iterative proportional fitting of the role shares
        probabilities = weights / weights.sum(axis=1, keepdims=True)
        weights = weights * (shares / probabilities.mean(axis=0))
    picks = draw_rows(rng, weights / weights.sum(axis=1, keepdims=True))
    return [names[int(i)] for i in picks]


def _habit_traits(users: Users) -> dict[str, np.ndarray]:
    """Boolean per user for each habit ``ROLE_AFFINITY`` names; short sessions are below
    the median of the user's persona."""
    traits = {name: users.device_habit == i for i, name in enumerate(DEVICE_HABIT_NAMES)}
    traits.update({name: users.download_habit == i for i, name in enumerate(DOWNLOAD_HABIT_NAMES)})
    short = np.zeros(users.count, dtype=bool)
    for persona in np.unique(users.persona):
        mine = users.persona == persona
        short[mine] = users.session_median_sec[mine] < np.median(users.session_median_sec[mine])
    traits["short_sessions"] = short
    return traits
