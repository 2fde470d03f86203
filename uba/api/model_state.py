"""The immutable state one request is scored with (``uba.api.state`` builds and swaps it).

Apart from the loader so that the request path (``uba.api.inference``) can name it
while the loader proves a new state by scoring a probe through that same path.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path

import numpy as np
import polars as pl

from uba.alerting.feedback import RULE_SCHEMA, Rule, active_rules, rule_tuples
from uba.alerting.thresholds import event_cuts
from uba.api.schemas import ModelInfo
from uba.features.compiled import CompiledBaselines
from uba.model.bundle import Bundle

Scorer = Callable[[np.ndarray], np.ndarray]
_RULE_DAYS_KEPT = 64
RulesKey = tuple[str, ...]


@dataclass(frozen=True, eq=False)
class BaselineIndex:
    """A baseline snapshot compiled at load into per-user arrays (``compiled``), so a
    request's features are array lookups by its user's row, not a join or a query."""

    as_of: date
    path: Path
    frame: pl.DataFrame
    compiled: CompiledBaselines
    stamp: tuple[int, ...] = ()

    @property
    def users(self) -> int:
        return len(self.compiled.positions)


@dataclass(frozen=True, eq=False)
class ModelState:
    """Everything one request needs; never mutated after it is built."""

    bundle: Bundle
    baselines: BaselineIndex
    scorer: Scorer
    scorer_name: str
    loaded_at: datetime
    user_cuts: Mapping[str, float] | None = None
    rules: pl.DataFrame = field(default_factory=lambda: pl.DataFrame(schema=RULE_SCHEMA))
    rules_key: RulesKey = ()
    _rules_by_day: dict[date, list[Rule]] = field(default_factory=dict, repr=False)

    @property
    def version(self) -> str:
        return self.bundle.version

    @property
    def threshold(self) -> float:
        """The model's global cut (per-user cuts, when on, are moved from it)."""
        return float(self.bundle.detector.threshold)

    def thresholds_for(self, user_ids: list[str]) -> np.ndarray:
        """Each event's cut: its user's own when per-user thresholds are on, else the global one."""
        return event_cuts(user_ids, self.user_cuts, self.threshold)

    def rules_on(self, day: date) -> list[Rule]:
        """The suppression rules active on ``day``, computed once per day per state (the
        rules only change with a reload, which builds a new state)."""
        found = self._rules_by_day.get(day)
        if found is None:
            found = rule_tuples(active_rules(self.rules, day))
            if len(self._rules_by_day) >= _RULE_DAYS_KEPT:
                self._rules_by_day.clear()
            self._rules_by_day[day] = found
        return found

    @property
    def percentile(self) -> float:
        return float(self.bundle.detector.percentile)

    def describe(self) -> ModelInfo:
        """What ``GET /model`` answers."""
        meta = dict(self.bundle.metadata)
        return ModelInfo(
            model_version=self.version,
            feature_set_version=self.bundle.metadata.get("feature_set_version"),
            features=list(self.bundle.detector.feature_names),
            threshold=self.threshold,
            percentile=self.percentile,
            threshold_percentile=self.percentile / 100.0,
            baseline_as_of=self.baselines.as_of,
            baseline_users=self.baselines.users,
            per_user_thresholds={
                "enabled": self.user_cuts is not None,
                "users": len(self.user_cuts) if self.user_cuts is not None else 0,
            },
            training={
                key: meta[key]
                for key in ("training_window", "rows", "score_summary", "created_at", "settings")
                if key in meta
            },
            loaded_at=self.loaded_at,
            scorer=self.scorer_name,
            suppression_rules=active_rules(self.rules, datetime.now(UTC).date()).height,
        )
