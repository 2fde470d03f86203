"""scikit-learn ``score_samples`` as an API scorer, for the latency benchmark only.

The bundle stores the forest as arrays and cannot be turned back into a scikit-learn
estimator, so this refits ``StandardScaler`` + ``IsolationForest`` on the training
matrix the bundle was fitted on, with the bundle's recorded parameters and seed. The
refit is only accepted when it scores a sample of that matrix the same as the bundle's
compact forest (to 1e-9): the benchmark then compares two ways of evaluating the same
forest, not two different models. Never used in production (``api.scorer: compact``).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from uba.errors import BundleError, UserError
from uba.model.bundle import Bundle

TOLERANCE = 1e-9
CHECK_ROWS = 512


def _load_matrix(path: Path | None, n_features: int) -> np.ndarray:
    if path is None:
        raise UserError("api.scorer=sklearn needs api.sklearn_training_matrix (a .npy training matrix)")
    try:
        matrix = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read api.sklearn_training_matrix {path}: {exc}") from exc
    if matrix.ndim != 2 or matrix.shape[1] != n_features:
        raise UserError(f"training matrix {path} has shape {matrix.shape}, expected (rows, {n_features})")
    return np.asarray(matrix, dtype=np.float64)


def sklearn_scorer(bundle: Bundle, matrix_path: Path | None) -> Callable[[np.ndarray], np.ndarray]:
    from sklearn.ensemble import IsolationForest
    from sklearn.preprocessing import StandardScaler

    detector = bundle.detector
    X = _load_matrix(matrix_path, len(detector.feature_names))
    params = detector.params
    scaler = StandardScaler().fit(X)
    forest = IsolationForest(
        n_estimators=int(params["n_estimators"]),
        contamination=float(params["contamination"]),
        max_samples=int(params["max_samples_"]),
        random_state=params["random_state"],
    ).fit(scaler.transform(X))

    def score(rows: np.ndarray) -> np.ndarray:
        scores: np.ndarray = -forest.score_samples(scaler.transform(rows))  # scikit-learn is untyped
        return scores

    sample = X[:: max(1, X.shape[0] // CHECK_ROWS)][:CHECK_ROWS]
    worst = float(np.max(np.abs(score(sample) - detector.anomaly_scores(sample))))
    if worst > TOLERANCE:
        raise BundleError(
            f"scikit-learn refit on {matrix_path} differs from bundle {bundle.version} by {worst:.3g}; "
            "it is not the training matrix of this bundle"
        )
    return score
