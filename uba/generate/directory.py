"""The generated population's user directory: departments and roles whose habits differ.

A department follows from the persona (the night shift is operations, the APAC team is
support-apac, power users are engineering...), so a department's users share their
hours, devices and session habits, which is what peer groups rely on. Roles are drawn
within the department; admins are privileged and critical, managers highly critical.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from uba.generate.personas import PERSONA_NAMES, Users, user_ids

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


def directory_frame(users: Users, rng: np.random.Generator) -> pl.DataFrame:
    """One directory row per user (the columns of ``uba.directory``)."""
    personas = [PERSONA_NAMES[p] for p in users.persona.tolist()]
    department = [DEPARTMENTS[p][int(rng.integers(len(DEPARTMENTS[p])))] for p in personas]
    role = rng.choice(list(ROLES), size=users.count, p=list(ROLES.values())).tolist()
    return pl.DataFrame({
        "user_id": user_ids(users.count),
        "department": department,
        "role": role,
        "is_privileged": [r == "admin" for r in role],
        "criticality": [CRITICALITY_BY_ROLE[r] for r in role],
    })
