"""The detector: a StandardScaler + IsolationForest fitted with scikit-learn, kept as arrays.

scikit-learn fits the model, but scoring never goes back to it. The fitted trees are
flattened into a :class:`CompactForest` (plain numpy arrays) for two reasons:

* the model bundle can then be stored as ``.npz`` + JSON and rebuilt without
  unpickling anything (loading a bundle must not be able to run code);
* ``IsolationForest.score_samples`` pays a Python call per tree, milliseconds for one
  row with 200 trees, while the API scores one event at a time.

The compact forest reproduces ``-IsolationForest.score_samples`` exactly (same
float32 input cast, same NaN routing, same per-tree accumulation order); ``fit_detector``
checks that on a sample of the training rows and the tests check it on random data.

Two ways to walk it, giving identical sums: a compiled kernel (``uba.model.kernel``,
numba; several times scikit-learn's rows per second per core, and a few microseconds for
one row) on tables derived here at load, and numpy gathers level by level (rows holding
NaN, whose routing the kernel does not implement; and the reference in tests and
benchmarks). numba is imported on the first score, not with this module.

Anomaly score convention: ``anomaly_score = -score_samples(scaled x)``, in (0, 1],
higher is more anomalous; ``is_anomaly = anomaly_score >= threshold`` where the
threshold is a percentile of the training scores.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from functools import cache, cached_property
from typing import TYPE_CHECKING, Protocol, TypedDict

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from sklearn.ensemble import IsolationForest

    from uba.settings import ModelSettings

TREE_LEAF = -1
LEAF_FEATURE = -2
FOREST_ARRAY_NAMES = (
    "children_left",
    "children_right",
    "feature",
    "threshold",
    "missing_go_to_left",
    "node_value",
    "tree_offsets",
)
# Rows per batch chunk are chosen so one chunk's (rows x trees) node matrix stays
# around this many cells: big enough to amortise numpy call overhead, small enough to
# keep the working set in cache.
_CHUNK_CELLS = 1 << 17
_SELF_CHECK_ROWS = 256
_SELF_CHECK_TOLERANCE = 1e-9
# The compiled kernel walks complete trees (2**D slots of 16 bytes per tree) up to this
# depth and table size, else scikit-learn's node arrays. Measured (200 trees, 17
# features): complete is 1.2-1.7x faster than node arrays at depths 8-12; at depth 14
# the tables (52 MB) no longer fit in cache and both fall to scikit-learn's speed.
COMPLETE_MAX_DEPTH = 12
# Batches from this many rows are walked once per distinct row (``path_lengths``). A
# day's events repeat feature vectors: the events of one session of one type in one
# hour share every feature, about 44% of a generated day's rows are such repeats, and
# finding them costs a few per cent of a walk. One API row never has a twin.
_DISTINCT_MIN_ROWS = 64
_COMPLETE_MAX_BYTES = 64 << 20

FloatArray = npt.NDArray[np.float64]
Rows32 = npt.NDArray[np.float32]


class ModelParams(TypedDict, total=False):
    """How a detector was fitted (``Detector.params``), stored as ``bundle.json``'s
    ``model`` section, which adds the forest's shape (``n_trees``, ``n_nodes``, ``depth``).
    Every key is optional: a bundle is data from disk, and a detector may be built by hand."""

    kind: str
    n_estimators: int
    contamination: float
    max_samples: int | str
    max_samples_: int
    random_state: int
    n_training_rows: int
    n_trees: int
    n_nodes: int
    depth: int


def average_path_length(n_samples: npt.ArrayLike) -> FloatArray:
    """c(n): mean depth of an unsuccessful BST search, the isolation-forest normaliser.

    Written exactly like scikit-learn's ``_average_path_length`` so the per-leaf
    corrections and the c(max_samples) denominator are bit-identical to its own.
    """
    n = np.asarray(n_samples, dtype=np.float64)
    shape = n.shape
    n = n.reshape(1, -1)
    result = np.zeros(n.shape)
    ones = n <= 1
    twos = n == 2
    rest = ~np.logical_or(ones, twos)
    result[ones] = 0.0
    result[twos] = 1.0
    result[rest] = 2.0 * (np.log(n[rest] - 1.0) + np.euler_gamma) - 2.0 * (n[rest] - 1.0) / n[rest]
    return result.reshape(shape)


def _float32_at_or_below(values: FloatArray) -> Rows32:
    """Largest float32 <= each float64 value.

    scikit-learn compares a float32 feature value with a float64 threshold. For a
    float32 ``x``, ``x <= t`` holds exactly when ``x <= f32_at_or_below(t)``, so the
    traversal can stay in float32 (half the memory traffic) without changing a leaf.
    """
    with np.errstate(over="ignore"):
        rounded = values.astype(np.float32)
    too_big = rounded.astype(np.float64) > values
    rounded[too_big] = np.nextafter(rounded[too_big], np.float32(-np.inf))
    return rounded


@dataclass(frozen=True, eq=False)
class _TraversalTables:
    """Derived arrays laid out for level-by-level traversal of all trees at once.

    Node ids are global (tree offset + local id). A leaf's two children are the leaf
    itself, so every row can take the same number of steps (the deepest tree's depth, at
    least one) and simply stays put once it has reached its leaf.
    """

    children: np.ndarray  # (2 * n_nodes,) intp: [2g] = left child, [2g + 1] = right child
    feature: np.ndarray  # (n_nodes,) intp, 0 at leaves
    threshold: np.ndarray  # (n_nodes,) float32, rounded down (see _float32_at_or_below)
    nan_goes_right: np.ndarray  # (n_nodes,) bool
    node_value: np.ndarray  # (n_nodes,) float64
    roots: np.ndarray  # (n_trees,) intp
    root_feature: np.ndarray  # feature[roots]: the first level needs no gather by node
    root_threshold: np.ndarray
    root_nan_goes_right: np.ndarray
    depth: int
    denominator: float


@dataclass(frozen=True, eq=False)
class _KernelTables:
    """What the compiled kernel (``uba.model.kernel``) walks, derived from validated arrays.

    Complete layout (``complete`` true, depth <= COMPLETE_MAX_DEPTH): ``feature`` and
    ``threshold`` are ``(n_trees, 2**depth - 1)`` and ``value`` is ``(n_trees, 2**depth)``.
    Node layout: ``children`` (2 per node, leaves point at themselves), ``feature``,
    ``threshold``, ``value`` per global node id, ``roots`` per tree.
    """

    complete: bool
    feature: npt.NDArray[np.uint32]
    threshold: Rows32  # rounded down (see _float32_at_or_below)
    value: FloatArray  # path length credited at a leaf
    children: npt.NDArray[np.uint32] | None = None  # node layout only
    roots: npt.NDArray[np.uint32] | None = None  # node layout only


@dataclass(frozen=True, eq=False)
class CompactForest:
    """All trees of a fitted IsolationForest as flat arrays (scikit-learn's node layout).

    Per node: ``children_left``/``children_right`` (local ids, -1 at leaves), ``feature``
    (column of the detector's feature list, -2 at leaves), ``threshold`` (go left when
    ``x <= threshold``), ``missing_go_to_left`` (NaN routing) and ``node_value`` (for a
    leaf: its depth plus c(samples in the leaf), the path length credited to a row that
    ends there; 0 for inner nodes). Tree ``i`` owns nodes
    ``tree_offsets[i]:tree_offsets[i + 1]``. ``max_samples`` is the fitted sub-sample
    size psi, whose c(psi) normalises the mean path length.
    """

    children_left: np.ndarray
    children_right: np.ndarray
    feature: np.ndarray
    threshold: np.ndarray
    missing_go_to_left: np.ndarray
    node_value: np.ndarray
    tree_offsets: np.ndarray
    max_samples: int
    n_features: int
    _tables: _TraversalTables = field(init=False, repr=False)
    _kernel: _KernelTables = field(init=False, repr=False)

    def __post_init__(self) -> None:
        _check_forest_arrays(self)
        object.__setattr__(self, "_tables", _build_tables(self))
        object.__setattr__(self, "_kernel", _build_kernel_tables(self._tables, self.n_features))

    @property
    def n_trees(self) -> int:
        return len(self.tree_offsets) - 1

    @property
    def n_nodes(self) -> int:
        return int(self.tree_offsets[-1])

    @property
    def depth(self) -> int:
        """Depth of the deepest leaf: the number of traversal steps per row."""
        return self._tables.depth

    def arrays(self) -> dict[str, np.ndarray]:
        """The stored form (what the bundle writes to ``forest.npz``)."""
        return {name: getattr(self, name) for name in FOREST_ARRAY_NAMES}

    @property
    def complete_layout(self) -> bool:
        """Whether the compiled kernel walks complete trees (else the node arrays)."""
        return self._kernel.complete

    def path_lengths(self, X32: Rows32, *, compiled: bool = True) -> FloatArray:
        """Sum over trees of each row's path length, accumulated tree by tree like scikit-learn.

        ``compiled=False`` forces the numpy path (the reference the kernel is tested
        against, and the benchmark's baseline). Rows holding NaN always take the numpy
        path, which implements scikit-learn's missing-value routing. A batch walks each
        distinct row once (``kernel.distinct_rows``): twins get the same sum, to the bit.
        """
        X32 = _as_rows32(X32, self.n_features)
        if not compiled or X32.shape[0] == 0:
            return self._numpy_path_lengths(X32)
        if X32.shape[0] >= _DISTINCT_MIN_ROWS:
            first, which = _forest_kernel().distinct_rows(X32)
            if first.shape[0] < X32.shape[0]:
                return self._walked_path_lengths(X32[first])[which]
        return self._walked_path_lengths(X32)

    def _walked_path_lengths(self, X32: Rows32) -> FloatArray:
        """Every row through the kernel, rows holding NaN again through the numpy path."""
        out, nan_rows = self._compiled_path_lengths(X32)
        if nan_rows:
            missing = np.isnan(X32).any(axis=1)
            out[missing] = self._numpy_path_lengths(X32[missing])
        return out

    def scores(self, X32: Rows32, *, compiled: bool = True) -> FloatArray:
        """Anomaly scores (= -score_samples) of already scaled float32 rows."""
        lengths = self.path_lengths(X32, compiled=compiled)
        return _scores_from_path_lengths(lengths, self._tables.denominator)

    def _compiled_path_lengths(self, X32: Rows32) -> tuple[FloatArray, int]:
        """Rows through the numba kernel: path lengths and the number of rows holding NaN.

        ``uba.model.kernel`` (numba) is imported, and its loops compiled or loaded from
        numba's cache, on first use, so importing this module stays cheap.
        """
        forest_kernel = _forest_kernel()
        k = self._kernel
        if k.complete:
            return forest_kernel.complete_path_lengths(X32, k.feature, self._complete_offsets, k.threshold, k.value)
        assert k.children is not None and k.roots is not None
        return forest_kernel.node_path_lengths(
            X32, k.children, k.feature, k.threshold, k.value, k.roots, self.depth
        )

    @cached_property
    def _complete_offsets(self) -> npt.NDArray[np.uint32]:
        """The complete-layout loop's offsets (feature x its block rows), made at the first
        score with the kernel module, so loading a bundle still imports no numba."""
        return _forest_kernel().complete_offsets(self._kernel.feature, self.n_features)

    def _numpy_path_lengths(self, X32: Rows32) -> FloatArray:
        """The numpy path: whole-array gathers, chunked so the node matrix stays in cache."""
        if X32.shape[0] == 1:
            return np.array([self._row_path_length(X32[0])])
        out = np.empty(X32.shape[0], dtype=np.float64)
        chunk = max(1, _CHUNK_CELLS // self.n_trees)
        for start in range(0, X32.shape[0], chunk):
            out[start : start + chunk] = self._chunk_path_lengths(X32[start : start + chunk])
        return out

    def _row_path_length(self, row: Rows32) -> float:
        """One row through all trees at once, one level per step (tiny arrays: fancy indexing)."""
        t = self._tables
        nan_present = bool(np.isnan(row).any())
        x = row[t.root_feature]
        go_right = x > t.root_threshold
        if nan_present:
            go_right |= np.isnan(x) & t.root_nan_goes_right
        nodes = t.children[2 * t.roots + go_right]
        for _ in range(t.depth - 1):
            x = row[t.feature[nodes]]
            go_right = x > t.threshold[nodes]
            if nan_present:
                go_right |= np.isnan(x) & t.nan_goes_right[nodes]
            nodes = t.children[2 * nodes + go_right]
        # cumsum adds tree by tree from 0.0, the same order as scikit-learn's `depths +=`.
        return float(np.cumsum(t.node_value[nodes])[-1])

    def _chunk_path_lengths(self, X32: Rows32) -> FloatArray:
        """Many rows through all trees at once: a (rows x trees) matrix of node ids per level.

        ``np.take`` and the root level read straight from the columns are worth ~20%
        over plain fancy indexing here (the reverse holds for the tiny single-row arrays).
        """
        t = self._tables
        n_rows, n_cols = X32.shape
        X32 = np.ascontiguousarray(X32)
        flat = X32.ravel()
        row_base = (np.arange(n_rows, dtype=np.intp) * n_cols)[:, None]
        nan_present = bool(np.isnan(flat).any())
        x = X32[:, t.root_feature]
        go_right = x > t.root_threshold
        if nan_present:
            go_right |= np.isnan(x) & t.root_nan_goes_right
        nodes = np.take(t.children, 2 * t.roots + go_right)
        for _ in range(t.depth - 1):
            x = np.take(flat, row_base + np.take(t.feature, nodes))
            go_right = x > np.take(t.threshold, nodes)
            if nan_present:
                go_right |= np.isnan(x) & np.take(t.nan_goes_right, nodes)
            nodes *= 2
            nodes += go_right
            nodes = np.take(t.children, nodes)
        return np.cumsum(np.take(t.node_value, nodes), axis=1)[:, -1]


class _KernelModule(Protocol):
    """What this module calls in ``uba.model.kernel`` (the module itself satisfies it)."""

    def complete_path_lengths(self, X32: Rows32, feature: npt.NDArray[np.uint32], offset: npt.NDArray[np.uint32],
                              threshold: Rows32, leaf_value: FloatArray, /) -> tuple[FloatArray, int]: ...

    def node_path_lengths(self, X32: Rows32, children: npt.NDArray[np.uint32], feature: npt.NDArray[np.uint32],
                          threshold: Rows32, node_value: FloatArray, roots: npt.NDArray[np.uint32], depth: int,
                          /) -> tuple[FloatArray, int]: ...

    def complete_offsets(self, feature: npt.NDArray[np.uint32], n_columns: int, /) -> npt.NDArray[np.uint32]: ...

    def scaled_rows(self, X: FloatArray, mean: FloatArray, scale: FloatArray, /) -> Rows32: ...

    def distinct_rows(self, X32: Rows32, /) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]: ...

    def load_batch_loops(self) -> None: ...

    def load_shard_loops(self) -> None: ...

    def ranked_kinds(self, severity: FloatArray, max_reasons: int, min_severity: float, min_top_severity: float,
                     /) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.int64]]: ...


@cache
def _forest_kernel() -> _KernelModule:
    """``uba.model.kernel``, imported once on first use (a plain import statement costs
    microseconds per call, a noticeable share of one API request)."""
    with _numba_without_blas():
        from uba.model import kernel as forest_kernel

    return forest_kernel


def import_compiled_loops(*, shard: bool = False) -> None:
    """Import numba and load (or compile) the loops now rather than at the first score:
    a Ray worker does it while the driver still builds the baselines (with ``shard``, the
    reason ranking of ``uba.features.reasons`` too), and the API when it loads a model
    (the distinct-rows loop of batches too)."""
    if shard:
        _forest_kernel().load_shard_loops()
    else:
        _forest_kernel().load_batch_loops()


def compiled_kernel() -> _KernelModule:
    """``uba.model.kernel``, imported once on first use without numba's BLAS probe: for the
    compiled loops other layers run (the reason ranking of a batch shard)."""
    return _forest_kernel()


# numba imports this at its own import, to learn whether np.dot & co. can be compiled
_SCIPY_BLAS = "scipy.linalg.cython_blas"


@contextmanager
def _numba_without_blas() -> Iterator[None]:
    """Import numba without its BLAS probe: the probe imports ``scipy.linalg`` (0.23 s of
    CPU, a third of numba's import), paid by every Ray worker of every run and by the API
    at its first request, for linear algebra our loops never use. A ``None`` entry in
    ``sys.modules`` makes that one import fail fast (numba then leaves np.dot & co. out);
    it is removed as soon as numba is imported, so scipy imports normally afterwards.
    Nothing is hidden when numba or scipy.linalg is already imported."""
    if "numba" in sys.modules or "scipy.linalg" in sys.modules:
        yield
        return
    sys.modules[_SCIPY_BLAS] = None  # type: ignore[assignment]  # None: "import fails", by Python's rules
    try:
        yield
    finally:
        if _SCIPY_BLAS in sys.modules and sys.modules[_SCIPY_BLAS] is None:
            del sys.modules[_SCIPY_BLAS]


def _as_rows32(X32: npt.ArrayLike, n_features: int) -> Rows32:
    """C-contiguous float32 rows of the forest's width (the kernel reads them unchecked)."""
    X32 = np.ascontiguousarray(X32, dtype=np.float32)
    if X32.ndim != 2 or X32.shape[1] != n_features:
        raise ValueError(
            f"expected rows of {n_features} features, got an array of shape {X32.shape}"
        )
    return X32


def _scores_from_path_lengths(path_lengths: FloatArray, denominator: float) -> FloatArray:
    """2 ** -(summed path / (n_trees * c(psi))), with scikit-learn's guard for psi = 1.

    The same operations as scikit-learn's ``np.divide(..., where=denominator != 0)``,
    spelt without the masked ufunc call (a few microseconds per API request).
    """
    ratio = np.ones_like(path_lengths) if denominator == 0 else path_lengths / denominator
    return 2.0 ** (-ratio)


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


def _check_forest_arrays(forest: CompactForest) -> None:
    """Refuse arrays that do not describe a forest of proper binary trees.

    A bundle is data from disk; these checks are what make traversal safe on it
    (every step moves to a later node of the same tree, so it ends at a leaf).
    """
    arrays = forest.arrays()
    for name, arr in arrays.items():
        _require(isinstance(arr, np.ndarray) and arr.ndim == 1, f"'{name}' must be a 1-D array")
    for name in ("children_left", "children_right", "feature", "tree_offsets"):
        _require(
            arrays[name].dtype.kind in "iu",
            f"'{name}' must hold integers, got {arrays[name].dtype}",
        )
    for name in ("threshold", "node_value"):
        _require(
            arrays[name].dtype.kind == "f", f"'{name}' must hold floats, got {arrays[name].dtype}"
        )
    _require(
        forest.missing_go_to_left.dtype.kind in "biu",
        f"'missing_go_to_left' must hold booleans, got {forest.missing_go_to_left.dtype}",
    )
    offsets = forest.tree_offsets
    _require(
        len(offsets) >= 2 and offsets[0] == 0,
        "'tree_offsets' must start at 0 and name at least one tree",
    )
    _require(bool(np.all(np.diff(offsets) > 0)), "'tree_offsets' must be strictly increasing")
    n_nodes = int(offsets[-1])
    for name in FOREST_ARRAY_NAMES[:-1]:
        _require(
            len(arrays[name]) == n_nodes,
            f"'{name}' has {len(arrays[name])} entries, tree_offsets says {n_nodes} nodes",
        )
    _require(int(forest.max_samples) >= 1, f"max_samples must be >= 1, got {forest.max_samples}")
    _require(int(forest.n_features) >= 1, f"n_features must be >= 1, got {forest.n_features}")
    _check_tree_structure(forest)
    leaf = forest.children_left == TREE_LEAF
    _require(
        bool(np.all(np.isfinite(forest.node_value[leaf]))), "'node_value' must be finite at leaves"
    )
    # scikit-learn sends every row right at a NaN threshold, the traversal here left.
    _require(
        not bool(np.any(np.isnan(forest.threshold[~leaf]))),
        "'threshold' must not be NaN at inner nodes",
    )


def _check_tree_structure(forest: CompactForest) -> None:
    offsets = forest.tree_offsets.astype(np.int64)
    sizes = np.diff(offsets)
    tree_of = np.repeat(np.arange(len(sizes)), sizes)
    local = np.arange(int(offsets[-1])) - offsets[tree_of]
    size = sizes[tree_of]
    left = forest.children_left.astype(np.int64)
    right = forest.children_right.astype(np.int64)
    leaf = left == TREE_LEAF
    inner = ~leaf
    _require(bool(np.all(right[leaf] == TREE_LEAF)), "a leaf has a right child but no left child")
    for name, child in (("children_left", left), ("children_right", right)):
        ok = (child[inner] > local[inner]) & (child[inner] < size[inner])
        _require(bool(np.all(ok)), f"'{name}' points outside its tree or backwards")
    feature = forest.feature.astype(np.int64)
    _require(
        bool(np.all((feature[inner] >= 0) & (feature[inner] < forest.n_features))),
        f"'feature' refers to a column outside 0..{forest.n_features - 1}",
    )
    children = np.concatenate([left[inner], right[inner]]) + np.concatenate(
        [offsets[tree_of][inner]] * 2
    )
    parents = np.bincount(children, minlength=int(offsets[-1]))
    is_root = local == 0
    _require(
        bool(np.all(parents[~is_root] == 1) and np.all(parents[is_root] == 0)),
        "tree nodes do not form proper trees (a node has no parent or several)",
    )


def _node_depths(forest: CompactForest, children: np.ndarray, roots: np.ndarray) -> int:
    """Depth of the deepest leaf, walking the global child table level by level."""
    depth = 0
    frontier = roots
    leaf = np.zeros(len(children) // 2, dtype=bool)
    leaf[np.flatnonzero(forest.children_left == TREE_LEAF)] = True
    while True:
        frontier = frontier[~leaf[frontier]]
        if frontier.size == 0:
            return depth
        frontier = np.concatenate([children[2 * frontier], children[2 * frontier + 1]])
        depth += 1


def _build_tables(forest: CompactForest) -> _TraversalTables:
    offsets = forest.tree_offsets.astype(np.intp)
    sizes = np.diff(offsets)
    base = np.repeat(offsets[:-1], sizes)
    ids = np.arange(int(offsets[-1]), dtype=np.intp)
    leaf = forest.children_left == TREE_LEAF
    children = np.empty(2 * len(ids), dtype=np.intp)
    children[0::2] = np.where(leaf, ids, forest.children_left.astype(np.intp) + base)
    children[1::2] = np.where(leaf, ids, forest.children_right.astype(np.intp) + base)
    roots = offsets[:-1].copy()
    n_trees = len(roots)
    denominator = float((n_trees * average_path_length([forest.max_samples]))[0])
    feature = np.where(leaf, 0, forest.feature).astype(np.intp)
    threshold = _float32_at_or_below(forest.threshold.astype(np.float64))
    nan_goes_right = ~forest.missing_go_to_left.astype(bool)
    return _TraversalTables(
        children=children,
        feature=feature,
        threshold=threshold,
        nan_goes_right=nan_goes_right,
        node_value=forest.node_value.astype(np.float64),
        roots=roots,
        root_feature=feature[roots],
        root_threshold=threshold[roots],
        root_nan_goes_right=nan_goes_right[roots],
        depth=_node_depths(forest, children, roots),
        denominator=denominator,
    )


def _build_kernel_tables(t: _TraversalTables, n_features: int) -> _KernelTables:
    """The compiled kernel's tables: complete trees when shallow enough, else node arrays.

    Every index the kernel will follow is in range by construction: slots and leaves
    of a complete tree are fixed by its depth, node ids come from validated children,
    and features are checked against ``n_features`` here once more.
    """
    _require(
        bool(np.all((t.feature >= 0) & (t.feature < n_features))),
        "kernel tables: feature out of range",
    )
    complete_bytes = (16 * len(t.roots)) << t.depth
    if t.depth <= COMPLETE_MAX_DEPTH and complete_bytes <= _COMPLETE_MAX_BYTES:
        return _complete_layout(t)
    _require(len(t.children) < 2**32, "kernel tables: too many nodes for 32-bit ids")
    return _KernelTables(
        complete=False,
        feature=t.feature.astype(np.uint32),
        threshold=t.threshold,
        value=t.node_value,
        children=t.children.astype(np.uint32),
        roots=t.roots.astype(np.uint32),
    )


def _complete_layout(t: _TraversalTables) -> _KernelTables:
    """Re-lay every tree as a complete binary tree of the forest's depth, level by level.

    Slot ``k`` of level ``L`` is ``2**L - 1 + k`` and its children are slots ``2k`` and
    ``2k + 1`` of level ``L + 1``. A leaf above the last level becomes an inner slot with
    threshold +inf (every non-NaN row goes left) and feature 0, and the leaf is carried
    down to both children (leaves point at themselves in ``t.children``), so every
    last-level slot below it holds its value (rows reach the left-most one).
    """
    n_trees, depth = len(t.roots), t.depth
    n_inner = (1 << depth) - 1
    feature = np.zeros((n_trees, n_inner), dtype=np.uint32)
    threshold = np.full((n_trees, n_inner), np.inf, dtype=np.float32)
    node_ids = np.arange(len(t.feature))
    is_leaf = t.children[0::2] == node_ids
    nodes = t.roots[:, None]
    for level in range(depth):
        slots = slice((1 << level) - 1, (1 << (level + 1)) - 1)
        inner = ~is_leaf[nodes]
        feature[:, slots] = np.where(inner, t.feature[nodes], 0)
        threshold[:, slots] = np.where(inner, t.threshold[nodes], np.float32(np.inf))
        nodes = t.children[2 * nodes[:, :, None] + np.array([0, 1])].reshape(n_trees, -1)
    _require(bool(np.all(is_leaf[nodes])), "kernel tables: a tree is deeper than the forest depth")
    return _KernelTables(
        complete=True, feature=feature, threshold=threshold, value=t.node_value[nodes]
    )


def compact_forest_from_sklearn(forest: IsolationForest, n_features: int) -> CompactForest:
    """Flatten a fitted IsolationForest, mapping each tree's features to input columns.

    When scikit-learn sub-samples features (``max_features`` < 1), tree ``i`` was fitted
    on ``X[:, estimators_features_[i]]``; otherwise on ``X`` itself (it then ignores
    ``estimators_features_``, and so do we), exactly as ``_compute_score_samples`` does.
    """
    subsample = forest._max_features != n_features
    parts: dict[str, list[np.ndarray]] = {name: [] for name in FOREST_ARRAY_NAMES[:-1]}
    sizes = []
    for estimator, columns in zip(forest.estimators_, forest.estimators_features_, strict=True):
        tree = estimator.tree_
        leaf = tree.children_left == TREE_LEAF
        feature = tree.feature.astype(np.int64)
        if subsample:
            feature = np.where(leaf, LEAF_FEATURE, np.asarray(columns)[np.maximum(feature, 0)])
        # Same expression as sklearn's `depths += path_lengths[leaf] + avg_lengths[leaf] - 1.0`.
        value = tree.compute_node_depths() + average_path_length(tree.n_node_samples) - 1.0
        parts["children_left"].append(tree.children_left.astype(np.int32))
        parts["children_right"].append(tree.children_right.astype(np.int32))
        parts["feature"].append(feature.astype(np.int32))
        parts["threshold"].append(tree.threshold.astype(np.float64))
        parts["missing_go_to_left"].append(np.asarray(tree.missing_go_to_left, dtype=bool))
        parts["node_value"].append(np.where(leaf, value, 0.0))
        sizes.append(tree.node_count)
    return CompactForest(
        **{name: np.concatenate(chunks) for name, chunks in parts.items()},
        tree_offsets=np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64),
        max_samples=int(forest._max_samples),
        n_features=n_features,
    )


@dataclass(frozen=True, eq=False)
class Detector:
    """A fitted scaler + compact forest + calibrated threshold, as plain values.

    ``params`` records the settings it was fitted with (JSON-friendly) so a bundle can
    say how it was made.
    """

    feature_names: tuple[str, ...]
    scaler_mean: FloatArray
    scaler_scale: FloatArray
    forest: CompactForest
    threshold: float
    percentile: float
    params: ModelParams = field(default_factory=ModelParams)

    def __post_init__(self) -> None:
        n = len(self.feature_names)
        _require(
            n >= 1 and len(set(self.feature_names)) == n,
            "feature names must be non-empty and distinct",
        )
        for name in ("scaler_mean", "scaler_scale"):
            arr = getattr(self, name)
            _require(
                isinstance(arr, np.ndarray) and arr.shape == (n,),
                f"'{name}' must have shape ({n},)",
            )
            _require(bool(np.all(np.isfinite(arr))), f"'{name}' must be finite")
        _require(bool(np.all(self.scaler_scale > 0)), "'scaler_scale' must be positive")
        _require(
            self.forest.n_features == n,
            f"forest expects {self.forest.n_features} features, names give {n}",
        )
        _require(
            0 < self.percentile < 100, f"percentile must be in (0, 100), got {self.percentile}"
        )

    def scale(self, X: npt.ArrayLike) -> Rows32:
        """StandardScaler.transform in float64, then the float32 cast IsolationForest applies.

        Compiled (one pass, no float64 temporaries: a tenth of a shard's scoring time was
        numpy's three passes); ``X`` may be any layout, such as a feature-major stack
        seen through ``.T``."""
        X64 = _as_matrix(X, len(self.feature_names))
        return _forest_kernel().scaled_rows(X64, self.scaler_mean, self.scaler_scale)

    def anomaly_scores(self, X: npt.ArrayLike) -> FloatArray:
        """Anomaly score per row of raw feature values (columns in ``feature_names`` order)."""
        return self.forest.scores(self.scale(X))

    def anomaly_score(self, row: npt.ArrayLike) -> float:
        """Score of one event's feature vector; the API's per-request call."""
        return float(self.anomaly_scores(np.asarray(row, dtype=np.float64).reshape(1, -1))[0])


def _as_matrix(X: npt.ArrayLike, n_features: int) -> FloatArray:
    X64 = np.asarray(X, dtype=np.float64)
    if X64.ndim == 1 and X64.shape[0] == n_features:
        X64 = X64.reshape(1, -1)
    if X64.ndim != 2 or X64.shape[1] != n_features:
        raise ValueError(
            f"expected rows of {n_features} features, got an array of shape {X64.shape}"
        )
    return X64


def _check_training_matrix(X: npt.ArrayLike, feature_names: Sequence[str]) -> FloatArray:
    names = list(feature_names)
    X64 = np.asarray(X, dtype=np.float64)
    if X64.ndim != 2 or X64.shape[1] != len(names):
        raise ValueError(
            f"training matrix has shape {X64.shape}, expected (rows, {len(names)}) for {len(names)} feature names"
        )
    if X64.shape[0] < 2:
        raise ValueError(f"need at least 2 training rows, got {X64.shape[0]}")
    bad = ~np.isfinite(X64).all(axis=0)
    if bad.any():
        column = names[int(np.flatnonzero(bad)[0])]
        count = int((~np.isfinite(X64[:, bad.argmax()])).sum())
        raise ValueError(f"training feature '{column}' has {count} non-finite values (NaN or inf)")
    return np.ascontiguousarray(X64)


def _resolve_max_samples(setting: int | str, n_rows: int) -> int | str:
    """An int above the row count means 'all rows', as in scikit-learn, minus its warning."""
    if isinstance(setting, str):
        return setting
    return min(int(setting), n_rows)


def fit_detector(
    X: npt.ArrayLike,
    feature_names: Sequence[str],
    model: ModelSettings,
    percentile: float,
) -> tuple[Detector, FloatArray]:
    """Fit scaler + forest on training features and calibrate the alert threshold.

    Returns the detector and the training anomaly scores (computed by the compact
    forest, so the threshold is a percentile of exactly what scoring will produce).
    The same ``X`` and settings give identical scores and threshold: the forest is seeded
    and fitted single-threaded.
    """
    from sklearn.ensemble import IsolationForest
    from sklearn.preprocessing import StandardScaler

    X64 = _check_training_matrix(X, feature_names)
    scaler = StandardScaler().fit(X64)
    scaled = scaler.transform(X64)
    forest = IsolationForest(
        n_estimators=model.n_estimators,
        contamination=model.contamination,
        max_samples=_resolve_max_samples(model.max_samples, X64.shape[0]),
        random_state=model.random_state,
    ).fit(scaled)
    detector = Detector(
        feature_names=tuple(feature_names),
        scaler_mean=np.asarray(scaler.mean_, dtype=np.float64),
        scaler_scale=np.asarray(scaler.scale_, dtype=np.float64),
        forest=compact_forest_from_sklearn(forest, X64.shape[1]),
        threshold=float("inf"),
        percentile=float(percentile),
        params={
            "kind": "isolation_forest",
            "n_estimators": model.n_estimators,
            "contamination": model.contamination,
            "max_samples": model.max_samples,
            "max_samples_": int(forest.max_samples_),
            "random_state": model.random_state,
            "n_training_rows": int(X64.shape[0]),
        },
    )
    _check_against_sklearn(detector, forest, scaled)
    train_scores = detector.anomaly_scores(X64)
    threshold = float(np.percentile(train_scores, percentile))
    return replace(detector, threshold=threshold), train_scores


def _check_against_sklearn(detector: Detector, forest: IsolationForest, scaled: FloatArray) -> None:
    """Guard against a scikit-learn release that changes how it scores.

    The compact forest mirrors private scikit-learn internals; if a future version
    drifts, training fails loudly here instead of silently scoring differently.
    """
    step = max(1, scaled.shape[0] // _SELF_CHECK_ROWS)
    sample = scaled[::step][:_SELF_CHECK_ROWS]
    expected = -forest.score_samples(sample)
    got = detector.forest.scores(sample.astype(np.float32))
    worst = float(np.max(np.abs(expected - got)))
    if worst > _SELF_CHECK_TOLERANCE:
        raise RuntimeError(
            f"compact forest differs from scikit-learn's score_samples by {worst:.3g}; "
            "this scikit-learn version is not supported by uba.model.forest"
        )
