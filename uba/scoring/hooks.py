"""What a score run does beyond scoring: its operations hooks in one place.

The scoring driver calls, per run::

    ops = RunOperations.prepare(settings, bundle, day)     # once: per-user cuts, rules
    ops.add_partial(drift_counts, per_user_counts)         # per shard result
    user_days = ops.user_day_alerts(baselines)             # once, from the day's aggregates
    manifest.update(ops.manifest_sections())               # drift, alert counts, user-day

The shards (``uba.scoring.shard``) apply the cuts and rules prepared here to their own
rows and send back drift bin counts and per-user alert counts; ``add_partial`` adds them
up, so nothing here needs the whole day in memory at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date
from typing import TYPE_CHECKING

import polars as pl

from uba.alerting.feedback import active_rules, load_rules
from uba.alerting.thresholds import (
    concentration_from_counts,
    load_user_cuts,
)
from uba.alerting.userday import stored_day_alerts
from uba.logs import get_logger
from uba.manifest import (
    AlertConcentration,
    AlertsSection,
    DriftSection,
    OperationSections,
    UserDaySection,
)
from uba.model.bundle import Bundle
from uba.monitoring.drift import (
    DayReference,
    DayUsers,
    DriftCounts,
    drift_report_from_counts,
    reference_for_weekday,
)
from uba.scoring.shard import PER_USER_SCHEMA

if TYPE_CHECKING:
    from uba.settings import Settings

log = get_logger("operations")

OPERATION_COLUMNS = ("user_threshold", "suppressed", "suppressed_by")


@dataclass
class RunOperations:
    """Per-run state of the operations hooks (see the module doc)."""

    settings: Settings
    bundle: Bundle
    day: date
    cuts: pl.DataFrame | None
    rules: pl.DataFrame
    reference: DayReference  # the bundle metadata with the day's reference
    reference_name: str
    counts: DriftCounts = field(default_factory=DriftCounts)
    per_user: list[pl.DataFrame] = field(default_factory=list)
    users_scored: int = 0

    @classmethod
    def prepare(cls, settings: Settings, bundle: Bundle, day: date) -> RunOperations:
        """Load what every chunk needs once: per-user cuts (if enabled) and the day's active rules."""
        cuts = load_user_cuts(settings, bundle)
        rules = active_rules(load_rules(settings.paths.data_dir), day)
        reference, name = reference_for_weekday(bundle.metadata, day.weekday())
        return cls(settings=settings, bundle=bundle, day=day, cuts=cuts, rules=rules, reference=reference,
                   reference_name=name)

    def add_partial(self, drift: DriftCounts, per_user: pl.DataFrame) -> None:
        """Fold one shard's drift bin counts and per-user alert counts into the day's.

        Per-user rows are summed as they arrive, so what is kept grows with the users of
        the day, not with its events or its number of shards.
        """
        self.counts = self.counts.merge(drift)
        merged = pl.concat([*self.per_user, per_user]) if self.per_user else per_user
        self.per_user = [merged.group_by("user_id").agg(pl.all().sum())]

    def user_day_alerts(self, baselines: pl.DataFrame) -> pl.DataFrame | None:
        """The day's user-day alerts against the run's own baselines (None when disabled)."""
        if not self.settings.user_day.enabled:
            return None
        found = stored_day_alerts(self.settings, self.day, baselines.lazy())
        if found is None:
            return None
        alerts, self.users_scored = found
        return alerts

    def _user_totals(self) -> pl.DataFrame:
        if not self.per_user:
            return pl.DataFrame(schema=PER_USER_SCHEMA)
        return pl.concat(self.per_user).group_by("user_id").agg(pl.all().sum())

    def manifest_sections(self, user_days: pl.DataFrame | None = None) -> OperationSections:
        """``drift``, ``alerts`` and ``user_day`` sections for the run manifest."""
        totals = self._user_totals()
        per_user_on = self.cuts is not None
        flagged = int(totals["alerts_user"].sum())
        suppressed = int(totals["suppressed"].sum())
        concentration: AlertConcentration = {
            "global_threshold": concentration_from_counts(totals, "alerts_global"),
            "per_user_thresholds": concentration_from_counts(totals, "alerts_user") if per_user_on else None}
        users = DayUsers(active=totals.filter(pl.col("events") > 0).height,
                         alerted=totals.filter(pl.col("alerts_global") > 0).height)
        drift: DriftSection = {**drift_report_from_counts(self.counts, self.reference, self.settings.monitoring,
                                                          users),
                               "reference": self.reference_name}
        alerts: AlertsSection = {
            "per_user_thresholds": per_user_on,
            "flagged_rows": flagged,
            "flagged_rows_global_threshold": int(totals["alerts_global"].sum()),
            "suppressed_rows": suppressed,
            "alert_rows": flagged - suppressed,
            "active_suppression_rules": self.rules.height,
            "concentration": concentration,
        }
        user_day: UserDaySection = {"enabled": self.settings.user_day.enabled,
                                    "users_scored": self.users_scored,
                                    "flagged_users": 0 if user_days is None else user_days.height}
        return {"drift": drift, "alerts": alerts, "user_day": user_day}

    def warn_on_drift(self, drift: DriftSection) -> None:
        """Heavy drift is logged loudly; whether it fails the run is the caller's decision."""
        if drift["status"] == "drift":
            log.warning("drift on %s: %s; retraining advised", self.day, "; ".join(drift["why"][:3]))
        elif drift["status"] == "warn":
            log.info("drift check on %s: warn (%s)", self.day, "; ".join(drift["warnings"][:2]))

