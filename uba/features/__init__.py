"""Behavioural features: daily aggregates -> user baselines -> event features.

``aggregates``, ``baselines`` and ``events`` are pure LazyFrame functions; ``store``
holds the job-layer helpers that read and write through ``uba.io``.
"""

from uba.features.aggregates import daily_aggregates
from uba.features.baselines import POPULATION_USER, user_baselines
from uba.features.events import (
    CONTEXT_COLUMNS,
    DEVIATION_COLUMNS,
    FEATURE_COLUMNS,
    FEATURE_SET_VERSION,
    attach_baselines,
    compute_features,
    event_features,
)
from uba.features.store import baselines_as_of, ensure_aggregates, snapshot_baselines

__all__ = [
    "CONTEXT_COLUMNS",
    "DEVIATION_COLUMNS",
    "FEATURE_COLUMNS",
    "FEATURE_SET_VERSION",
    "POPULATION_USER",
    "attach_baselines",
    "baselines_as_of",
    "compute_features",
    "daily_aggregates",
    "ensure_aggregates",
    "event_features",
    "snapshot_baselines",
    "user_baselines",
]
