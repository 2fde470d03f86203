"""The compact forest must give scikit-learn's scores exactly, on any input."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from sklearn.ensemble import IsolationForest
from sklearn.ensemble._iforest import _average_path_length
from sklearn.preprocessing import StandardScaler

from uba.model.forest import (
    CompactForest,
    Detector,
    average_path_length,
    compact_forest_from_sklearn,
    fit_detector,
)
from uba.settings import ModelSettings

TOLERANCE = 1e-9


def _training_matrix(rng: np.random.Generator, n_rows: int, n_features: int) -> np.ndarray:
    """Mixed shapes: gaussian, heavy-tailed, discrete, and one constant column."""
    X = rng.normal(size=(n_rows, n_features))
    X[:, 0] = rng.lognormal(3.0, 1.0, n_rows)
    if n_features > 2:
        X[:, 1] = rng.integers(0, 24, n_rows)
        X[:, 2] = 5.0
    return X


def _probe_rows(rng: np.random.Generator, X: np.ndarray, n_rows: int) -> np.ndarray:
    """Rows inside and far outside the training range, plus exact copies of training rows."""
    spread = X.std(axis=0) + 1.0
    wide = X.mean(axis=0) + rng.normal(size=(n_rows, X.shape[1])) * spread * 4
    return np.vstack([wide, X[: n_rows // 4]])


def _sklearn_scores(X_train: np.ndarray, X: np.ndarray, settings: ModelSettings) -> np.ndarray:
    max_samples = settings.max_samples
    if isinstance(max_samples, int):
        max_samples = min(max_samples, len(X_train))
    scaler = StandardScaler().fit(X_train)
    forest = IsolationForest(
        n_estimators=settings.n_estimators,
        contamination=settings.contamination,
        max_samples=max_samples,
        random_state=settings.random_state,
    ).fit(scaler.transform(X_train))
    return -forest.score_samples(scaler.transform(X))


@pytest.mark.parametrize(
    ("n_rows", "n_features", "n_estimators", "max_samples"),
    [(3000, 12, 200, "auto"), (600, 3, 50, 64), (2000, 7, 80, 1024), (150, 20, 30, 500)],
)
def test_compact_scores_equal_sklearn_score_samples(n_rows, n_features, n_estimators, max_samples):
    rng = np.random.default_rng(n_rows + n_features)
    X = _training_matrix(rng, n_rows, n_features)
    settings = ModelSettings(n_estimators=n_estimators, max_samples=max_samples, random_state=7)
    detector, train_scores = fit_detector(X, [f"f{i}" for i in range(n_features)], settings, 98.0)
    probe = _probe_rows(rng, X, 3000)

    expected = _sklearn_scores(X, probe, settings)
    got = detector.anomaly_scores(probe)

    assert got.shape == expected.shape
    assert np.max(np.abs(got - expected)) <= TOLERANCE
    assert np.max(np.abs(train_scores - _sklearn_scores(X, X, settings))) <= TOLERANCE
    assert np.all((got > 0) & (got <= 1))


def test_rows_exactly_on_split_thresholds_take_sklearns_branch():
    """float32 inputs equal to (or one ulp around) a float64 threshold are the risky case."""
    rng = np.random.default_rng(3)
    X = rng.normal(size=(1000, 4)).astype(np.float32)
    forest = IsolationForest(n_estimators=40, random_state=0).fit(X)
    compact = compact_forest_from_sklearn(forest, 4)
    inner = compact.children_left != -1
    thresholds = compact.threshold[inner].astype(np.float32)
    columns = compact.feature[inner]
    rows = np.repeat(X[:1], 3 * len(thresholds), axis=0)
    for k, delta in enumerate((-np.inf, 0, np.inf)):
        picked = thresholds if delta == 0 else np.nextafter(thresholds, np.float32(delta))
        rows[np.arange(len(thresholds)) + k * len(thresholds), columns] = picked

    assert np.max(np.abs(compact.scores(rows) + forest.score_samples(rows))) <= TOLERANCE


def test_missing_values_follow_sklearns_nan_routing():
    rng = np.random.default_rng(4)
    X = rng.normal(size=(800, 5))
    forest = IsolationForest(n_estimators=60, random_state=1).fit(X)
    compact = compact_forest_from_sklearn(forest, 5)
    probe = rng.normal(size=(500, 5)).astype(np.float32)
    probe[rng.random(probe.shape) < 0.3] = np.nan

    assert np.max(np.abs(compact.scores(probe) + forest.score_samples(probe))) <= TOLERANCE
    one = probe[:1]
    assert abs(compact.scores(one)[0] + forest.score_samples(one)[0]) <= TOLERANCE


def test_feature_subsampling_maps_tree_columns_back_to_inputs():
    rng = np.random.default_rng(5)
    X = rng.normal(size=(700, 9))
    forest = IsolationForest(n_estimators=50, max_features=0.5, random_state=2).fit(X)
    compact = compact_forest_from_sklearn(forest, 9)
    probe = (rng.normal(size=(2000, 9)) * 3).astype(np.float32)

    assert forest._max_features == 4
    assert np.max(np.abs(compact.scores(probe) + forest.score_samples(probe))) <= TOLERANCE


def test_average_path_length_is_sklearns():
    n = np.array([0, 1, 2, 3, 4, 10, 255, 256, 257, 100_000])
    assert np.array_equal(average_path_length(n), _average_path_length(n))


def test_single_row_path_equals_batch_path():
    rng = np.random.default_rng(6)
    X = _training_matrix(rng, 1500, 8)
    detector, _ = fit_detector(
        X, [f"f{i}" for i in range(8)], ModelSettings(n_estimators=100), 98.0
    )
    probe = _probe_rows(rng, X, 400)

    batch = detector.anomaly_scores(probe)
    singles = np.array([detector.anomaly_score(row) for row in probe])

    assert np.array_equal(batch, singles)


def test_threshold_is_the_configured_percentile_of_training_scores():
    rng = np.random.default_rng(8)
    X = _training_matrix(rng, 2500, 6)
    detector, train_scores = fit_detector(X, list("abcdef"), ModelSettings(n_estimators=60), 97.5)

    assert detector.threshold == np.percentile(train_scores, 97.5)
    assert detector.percentile == 97.5
    flagged = train_scores >= detector.threshold  # the cut uba.alerting.thresholds.decide applies
    assert abs(flagged.mean() - 0.025) < 0.002


def test_fitting_twice_gives_identical_scores_and_threshold():
    rng = np.random.default_rng(9)
    X = _training_matrix(rng, 1200, 5)
    settings = ModelSettings(n_estimators=40, random_state=11)
    first, first_scores = fit_detector(X, list("abcde"), settings, 98.0)
    second, second_scores = fit_detector(X, list("abcde"), settings, 98.0)
    other, _ = fit_detector(X, list("abcde"), ModelSettings(n_estimators=40, random_state=12), 98.0)

    assert np.array_equal(first_scores, second_scores)
    assert first.threshold == second.threshold
    for name, array in first.forest.arrays().items():
        assert np.array_equal(array, second.forest.arrays()[name]), name
    assert not np.array_equal(first.forest.threshold, other.forest.threshold)


def test_constant_column_gets_unit_scale_like_standard_scaler():
    rng = np.random.default_rng(10)
    X = _training_matrix(rng, 500, 4)
    detector, _ = fit_detector(X, list("abcd"), ModelSettings(n_estimators=20), 98.0)

    assert detector.scaler_scale[2] == 1.0
    assert detector.scaler_mean[2] == 5.0
    assert np.all(np.isfinite(detector.anomaly_scores(X)))


def test_max_samples_above_row_count_uses_all_rows_without_warning():
    rng = np.random.default_rng(12)
    X = rng.normal(size=(100, 3))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        detector, _ = fit_detector(
            X, list("abc"), ModelSettings(n_estimators=10, max_samples=5000), 98.0
        )
    assert detector.forest.max_samples == 100
    assert detector.params["max_samples_"] == 100


def test_non_finite_training_value_is_refused_naming_the_feature():
    X = np.ones((50, 3))
    X[7, 1] = np.nan
    with pytest.raises(ValueError, match="'session_z' has 1 non-finite"):
        fit_detector(X, ["hour", "session_z", "device"], ModelSettings(n_estimators=10), 98.0)


def test_scoring_rows_of_the_wrong_width_is_refused():
    rng = np.random.default_rng(13)
    detector, _ = fit_detector(
        rng.normal(size=(100, 3)), list("abc"), ModelSettings(n_estimators=10), 98.0
    )
    with pytest.raises(
        ValueError, match=r"expected rows of 3 features, got an array of shape \(2, 4\)"
    ):
        detector.anomaly_scores(np.zeros((2, 4)))


def _small_forest_arrays() -> dict[str, np.ndarray]:
    """Root splitting feature 0 at 0.5 into two leaves."""
    return {
        "children_left": np.array([1, -1, -1]),
        "children_right": np.array([2, -1, -1]),
        "feature": np.array([0, -2, -2]),
        "threshold": np.array([0.5, -2.0, -2.0]),
        "missing_go_to_left": np.array([True, False, False]),
        "node_value": np.array([0.0, 1.0, 2.0]),
        "tree_offsets": np.array([0, 3]),
    }


def test_hand_made_forest_scores_by_its_leaves():
    forest = CompactForest(**_small_forest_arrays(), max_samples=2, n_features=1)
    scores = forest.scores(np.array([[0.5], [0.6], [np.nan]], dtype=np.float32))
    # c(2) = 1, one tree: left leaf path 1 -> 2**-1, right leaf path 2 -> 2**-2, NaN goes left.
    assert scores.tolist() == [0.5, 0.25, 0.5]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"children_left": np.array([0, -1, -1])}, "points outside its tree or backwards"),
        ({"children_right": np.array([5, -1, -1])}, "points outside its tree or backwards"),
        ({"feature": np.array([3, -2, -2])}, "outside 0..0"),
        ({"threshold": np.array([0.5, 1.0])}, "'threshold' has 2 entries"),
        ({"tree_offsets": np.array([0, 2])}, "has 3 entries"),
        ({"children_left": np.array([1, -1, -1.0])}, "must hold integers"),
        ({"children_left": np.array([2, -1, -1])}, "proper trees"),
        ({"node_value": np.array([0.0, np.inf, 1.0])}, "finite at leaves"),
    ],
)
def test_malformed_forest_arrays_are_refused(change, message):
    arrays = _small_forest_arrays() | change
    with pytest.raises(ValueError, match=message):
        CompactForest(**arrays, max_samples=2, n_features=1)


def test_detector_refuses_scaler_of_the_wrong_length():
    forest = CompactForest(**_small_forest_arrays(), max_samples=2, n_features=1)
    with pytest.raises(ValueError, match=r"'scaler_mean' must have shape \(1,\)"):
        Detector(("a",), np.zeros(2), np.ones(1), forest, threshold=0.5, percentile=98.0)
    with pytest.raises(ValueError, match="'scaler_scale' must be positive"):
        Detector(("a",), np.zeros(1), np.zeros(1), forest, threshold=0.5, percentile=98.0)


def test_single_leaf_trees_match_sklearns_one_sample_special_case():
    X = np.array([[1.0, 2.0]], dtype=np.float32)
    forest = IsolationForest(n_estimators=5, random_state=0).fit(X)
    compact = compact_forest_from_sklearn(forest, 2)
    probe = np.array([[1.0, 2.0], [9.0, -9.0], [0.0, 0.0]], dtype=np.float32)

    assert compact.depth == 0
    assert np.array_equal(compact.scores(probe), -forest.score_samples(probe))
    assert compact.scores(probe[:1])[0] == -forest.score_samples(probe[:1])[0]
