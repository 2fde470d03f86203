"""Behavioural features: daily aggregates -> user baselines -> event features.

``aggregates`` and ``baselines`` are pure LazyFrame functions; ``compiled`` turns a
baseline snapshot into per-user arrays once and holds the one definition of the event
features (``feature_arrays``), which ``events`` applies to frames and the API to a
request's events; ``store`` holds the job-layer helpers that read and write through
``uba.io``.
"""

from uba.features.aggregates import daily_aggregates
from uba.features.baselines import POPULATION_USER, user_baselines
from uba.features.compiled import CompiledBaselines, compile_baselines, feature_arrays
from uba.features.events import (
    CONTEXT_COLUMNS,
    DEVIATION_COLUMNS,
    FEATURE_COLUMNS,
    FEATURE_SET_VERSION,
    event_features,
    features_frame,
)
from uba.features.store import (
    baselines_as_of,
    ensure_aggregates,
    protected_baselines_as_of,
    snapshot_baselines,
    unlearned_as_of,
)

__all__ = [
    "CONTEXT_COLUMNS",
    "DEVIATION_COLUMNS",
    "FEATURE_COLUMNS",
    "FEATURE_SET_VERSION",
    "POPULATION_USER",
    "CompiledBaselines",
    "baselines_as_of",
    "compile_baselines",
    "daily_aggregates",
    "ensure_aggregates",
    "event_features",
    "feature_arrays",
    "features_frame",
    "protected_baselines_as_of",
    "snapshot_baselines",
    "unlearned_as_of",
    "user_baselines",
]
