"""The compiled forest kernel gives scikit-learn's scores, and only ever indexes in range.

The kernel (``uba.model.kernel``) reads its tables without bounds checks, so besides
parity with scikit-learn on fitted forests, the tables built from any forest that
passes validation (hand-made, odd node orders, odd dtypes, infinite thresholds) are
checked for range and compared with a plain-Python walk of scikit-learn's rules.
"""

from __future__ import annotations

import math
import pickle
import subprocess
import sys

import numba
import numpy as np
import pytest
from sklearn.ensemble import IsolationForest

import uba.model.forest
from uba.model import kernel as forest_kernel
from uba.model.forest import COMPLETE_MAX_DEPTH, CompactForest, compact_forest_from_sklearn

TOLERANCE = 1e-9


def _fitted(n_rows: int, n_features: int, seed: int, **params: object) -> IsolationForest:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n_rows, n_features))
    X[:, 0] = rng.lognormal(2.0, 1.0, n_rows)
    return IsolationForest(random_state=seed, **params).fit(X)


def _probe(rng: np.random.Generator, n_rows: int, n_features: int) -> np.ndarray:
    return (rng.normal(size=(n_rows, n_features)) * rng.choice([0.5, 2.0, 6.0], (n_rows, 1))).astype(
        np.float32
    )


@pytest.mark.parametrize(
    ("n_features", "params"),
    [
        (17, {"n_estimators": 100}),  # the product's shape: psi 256, depth 8
        (5, {"n_estimators": 60, "max_samples": 16}),  # shallow: depth 4
        (9, {"n_estimators": 40, "max_samples": 1024}),  # depth 10
        (12, {"n_estimators": 50, "max_features": 0.5}),  # feature sub-sampling
        (3, {"n_estimators": 30, "max_samples": 2}),  # depth 1
    ],
)
def test_kernel_scores_equal_sklearn_and_the_numpy_path(n_features, params):
    forest = _fitted(3000, n_features, n_features, **params)
    compact = compact_forest_from_sklearn(forest, n_features)
    probe = _probe(np.random.default_rng(1), 5000, n_features)

    got = compact.scores(probe)

    assert compact.complete_layout
    assert np.max(np.abs(got + forest.score_samples(probe))) <= TOLERANCE
    assert np.array_equal(got, compact.scores(probe, compiled=False))


@pytest.mark.parametrize("n_features", [1, 18, 40, 130])
def test_every_row_count_around_block_and_lane_edges_scores_like_sklearn(n_features):
    """The complete-layout loop copies blocks of rows (256 for the product's width, fewer
    for wider rows) feature-major and walks groups of 8; rows past the last group of a
    block go tree-wise. Row counts around those edges, at widths that change the block."""
    from uba.model.kernel import complete_block_rows

    forest = _fitted(2000, n_features, n_features, n_estimators=25)
    compact = compact_forest_from_sklearn(forest, n_features)
    block = complete_block_rows(n_features)
    assert block % 8 == 0 and (block * 4 * n_features <= 24 * 1024 or block == 8)
    probe = _probe(np.random.default_rng(n_features), 3 * block + 13, n_features)
    reference = -forest.score_samples(probe)
    for n_rows in sorted({1, 7, 8, 9, block - 1, block, block + 1, block + 7, block + 8, 2 * block + 5,
                          3 * block + 13}):
        got = compact.scores(probe[:n_rows])
        assert np.max(np.abs(got - reference[:n_rows])) <= TOLERANCE, n_rows
        assert np.array_equal(got, compact.scores(probe[:n_rows], compiled=False)), n_rows


def test_forest_deeper_than_the_complete_layout_cap_walks_the_node_arrays():
    forest = _fitted(9000, 6, 2, n_estimators=30, max_samples=9000)  # max depth ceil(log2 9000) = 14
    compact = compact_forest_from_sklearn(forest, 6)
    probe = _probe(np.random.default_rng(2), 3000, 6)

    assert compact.depth > COMPLETE_MAX_DEPTH
    assert not compact.complete_layout
    assert np.max(np.abs(compact.scores(probe) + forest.score_samples(probe))) <= TOLERANCE
    assert np.array_equal(compact.scores(probe), compact.scores(probe, compiled=False))


def test_node_layout_of_a_shallow_forest_gives_the_same_sums(monkeypatch):
    forest = _fitted(2000, 8, 3, n_estimators=50)
    complete = compact_forest_from_sklearn(forest, 8)
    monkeypatch.setattr(uba.model.forest, "COMPLETE_MAX_DEPTH", 0)
    node = compact_forest_from_sklearn(forest, 8)
    probe = _probe(np.random.default_rng(3), 2000, 8)

    assert complete.complete_layout and not node.complete_layout
    assert np.array_equal(complete.path_lengths(probe), node.path_lengths(probe))


@pytest.mark.parametrize("max_samples", [256, 9000])
def test_rows_with_nan_are_scored_like_sklearn_among_clean_rows(max_samples):
    forest = _fitted(9000, 7, 4, n_estimators=40, max_samples=max_samples)
    compact = compact_forest_from_sklearn(forest, 7)
    rng = np.random.default_rng(4)
    probe = _probe(rng, 3000, 7)
    probe[rng.random(probe.shape) < 0.05] = np.nan  # about 30% of rows hold a NaN

    got = compact.scores(probe)

    assert 0 < np.isnan(probe).any(axis=1).sum() < len(probe)
    assert np.max(np.abs(got + forest.score_samples(probe))) <= TOLERANCE


def test_single_rows_equal_the_batch_and_sklearn():
    forest = _fitted(2000, 17, 5, n_estimators=200)
    compact = compact_forest_from_sklearn(forest, 17)
    probe = _probe(np.random.default_rng(5), 300, 17)

    batch = compact.scores(probe)
    singles = np.array([compact.scores(row[None, :])[0] for row in probe])

    assert np.array_equal(batch, singles)
    assert np.max(np.abs(singles + forest.score_samples(probe))) <= TOLERANCE


def _with_twins(rng: np.random.Generator, distinct: np.ndarray, n_rows: int) -> np.ndarray:
    """``n_rows`` rows drawn from ``distinct`` (twins far apart and side by side)."""
    return np.ascontiguousarray(distinct[rng.integers(0, len(distinct), n_rows)])


@pytest.mark.parametrize("max_samples", [256, 9000])  # complete layout, node arrays
def test_rows_with_twins_score_like_sklearn_and_like_each_row_alone(max_samples):
    """A batch walks each distinct row once and hands its sum to the twins: the scores
    must still be scikit-learn's and each row's own, for twins holding NaN too, and
    whether the batch has one bucket of rows or many (more than 4096 rows)."""
    forest = _fitted(9000, 7, 11, n_estimators=40, max_samples=max_samples)
    compact = compact_forest_from_sklearn(forest, 7)
    rng = np.random.default_rng(11)
    distinct = _probe(rng, 3000, 7)
    distinct[:50, 3] = np.nan
    distinct[50:60, 2] = -0.0
    distinct[60:70, 2] = 0.0
    probe = _with_twins(rng, distinct, 20_000)

    got = compact.scores(probe)

    assert np.max(np.abs(got + forest.score_samples(probe))) <= TOLERANCE
    assert np.array_equal(got, compact.scores(probe, compiled=False))
    alone = np.array([compact.scores(probe[i:i + 1])[0] for i in range(0, len(probe), 97)])
    assert np.array_equal(got[::97], alone)


@pytest.mark.parametrize("n_rows", [1, 2, 63, 64, 4096, 4097, 50_000])
def test_distinct_rows_are_the_bitwise_distinct_rows_and_rebuild_the_input(n_rows):
    rng = np.random.default_rng(n_rows)
    distinct = _probe(rng, max(1, n_rows // 3), 18)
    distinct[0, 0] = np.nan
    if len(distinct) > 2:
        distinct[1, 0] = -0.0
        distinct[2, 0] = 0.0
    X = _with_twins(rng, distinct, n_rows)

    first, which = forest_kernel.distinct_rows(X)

    bits = X.view(np.uint32)
    assert len(first) == len(np.unique(bits, axis=0))
    assert np.array_equal(X[first][which].view(np.uint32), bits)
    assert np.all(first[which] <= np.arange(n_rows))  # each distinct row at its first appearance
    assert len(np.unique(first)) == len(first)


def test_rows_whose_hashes_collide_are_told_apart_by_their_bits(monkeypatch):
    """Every row given the same hash (the loop run as plain Python with a constant hash):
    only a bit-for-bit compare can separate them, and it must."""
    monkeypatch.setattr(forest_kernel, "_row_hash", lambda bits, r: np.uint64(0xDEADBEEF12345678))
    rng = np.random.default_rng(3)
    X = _with_twins(rng, _probe(rng, 40, 5), 300)
    first = np.empty(len(X), dtype=np.int64)
    which = np.empty(len(X), dtype=np.int64)

    count = forest_kernel._distinct_loop(X.view(np.uint32), first, which)

    assert count == len(np.unique(X.view(np.uint32), axis=0))
    assert np.array_equal(X[first[:count]][which], X)


# Joux's multicollision on kernel._row_hash, found by a birthday search over the state
# after two random columns (a third column closes each near-miss): per stage, two column
# triples that take the hash state to the same value, every value a float32 in [1, 2).
# A row picks one triple of each stage, so k stages give 2**k distinct rows of 3k
# columns sharing all 64 bits of their hash.
_SAME_HASH_STAGES = (
    ((0x3FA6B8D6, 0x3FE81836, 0x3F95CB89), (0x3F9E46EA, 0x3FA83277, 0x3F800000)),
    ((0x3FA17B81, 0x3F842A1E, 0x3F82D66D), (0x3FC738E9, 0x3FA49452, 0x3F800000)),
    ((0x3F84D690, 0x3FFDE7A2, 0x3F8B1184), (0x3F95985D, 0x3FF4B2C2, 0x3F800000)),
    ((0x3F96D850, 0x3FA14C30, 0x3F8596C2), (0x3FB86E17, 0x3FD1FE41, 0x3F800000)),
    ((0x3FA6A86E, 0x3F85E20B, 0x3FC3844C), (0x3F994FE8, 0x3F907C06, 0x3F800000)),
    ((0x3FD021CC, 0x3F82C30C, 0x3F87D4A0), (0x3FC028AD, 0x3F87218D, 0x3F800000)),
    ((0x3FFB47A6, 0x3F82A1FD, 0x3F8E8B07), (0x3FF15089, 0x3FCDA3C9, 0x3F800000)),
    ((0x3FC7C67C, 0x3FDA9FB6, 0x3F99210E), (0x3F8072AF, 0x3FB1A527, 0x3F800000)),
)


def _rows_sharing_one_hash() -> np.ndarray:
    """256 distinct float32 rows of 24 columns whose ``_row_hash`` is one and the same."""
    picks = (np.arange(1 << len(_SAME_HASH_STAGES))[:, None] >> np.arange(len(_SAME_HASH_STAGES))) & 1
    stages = np.array(_SAME_HASH_STAGES, dtype=np.uint32)  # (stage, pick, column)
    bits = stages[np.arange(len(_SAME_HASH_STAGES)), picks].reshape(len(picks), -1)
    return np.ascontiguousarray(bits).view(np.float32)


def test_the_crafted_rows_are_distinct_and_share_all_64_bits_of_their_hash():
    X = _rows_sharing_one_hash()
    bits = X.view(np.uint32)

    assert len(np.unique(bits, axis=0)) == len(X) == 256
    assert len({int(forest_kernel._row_hash(bits, r)) for r in range(len(X))}) == 1
    assert np.all((X >= 1.0) & (X < 2.0))


def test_rows_crafted_to_share_one_hash_are_never_merged_and_score_like_sklearn():
    """A real collision through the compiled loop (not a patched hash): every row keeps
    its own score, scikit-learn's and the one it gets alone, twins included."""
    X = _rows_sharing_one_hash()
    forest = IsolationForest(n_estimators=60, random_state=8).fit(1.0 + np.random.default_rng(8).random((3000, 24)))
    compact = compact_forest_from_sklearn(forest, 24)
    probe = _with_twins(np.random.default_rng(8), X, 1000)

    first, which = forest_kernel.distinct_rows(probe)
    got = compact.scores(probe)

    assert np.array_equal(probe[first][which].view(np.uint32), probe.view(np.uint32))
    assert np.max(np.abs(got + forest.score_samples(probe))) <= TOLERANCE
    assert np.array_equal(got, compact.scores(probe, compiled=False))
    assert np.array_equal(got[:300], [compact.scores(row[None, :])[0] for row in probe[:300]])


def test_rows_sharing_one_hash_cost_a_bounded_number_of_row_compares(monkeypatch):
    """n rows sharing a hash would meet each other in one probe chain: n**2 / 2 row
    compares (5 * 10**9 for 100 k crafted rows in one shard). The search
    gives up after a fixed number of probe steps a row instead (loop run as Python to
    count the compares)."""
    forest_kernel.load_batch_loops()  # compiled before the patch below, never with it
    compares = []
    same_row = forest_kernel._same_row

    def counted_same_row(bits: np.ndarray, a: int, b: int) -> bool:
        compares.append((a, b))
        return bool(same_row(bits, a, b))

    monkeypatch.setattr(forest_kernel, "_same_row", counted_same_row)
    bits = _rows_sharing_one_hash().view(np.uint32)
    n_rows = len(bits)

    forest_kernel._distinct_loop(bits, np.empty(n_rows, dtype=np.int64), np.empty(n_rows, dtype=np.int64))

    assert len(compares) <= 32 * n_rows  # kernel._PROBES_PER_ROW; all pairs would be 32,640


def test_the_compiled_search_gives_up_on_rows_sharing_one_hash_and_every_row_is_walked():
    X = np.repeat(_rows_sharing_one_hash(), 2, axis=0)

    first, which = forest_kernel.distinct_rows(X)

    assert np.array_equal(first, np.arange(len(X))) and np.array_equal(which, np.arange(len(X)))


def test_a_probe_chain_past_the_last_slot_wraps_to_the_first_in_the_compiled_loop():
    """64 rows (one bucket, a table of 128 slots) from 20 distinct rows whose hash picks
    slot 127: their chain runs 127, 0, 1, ... A missed wrap would read and write past the
    table, which the compiled loop does not bounds-check."""
    rng = np.random.default_rng(12)
    candidates = _probe(rng, 6000, 18)
    bits = candidates.view(np.uint32)
    last_slot = [r for r in range(len(candidates)) if int(forest_kernel._row_hash(bits, r)) & 127 == 127][:20]
    X = _with_twins(rng, candidates[last_slot], 64)

    first, which = forest_kernel.distinct_rows(X)

    assert len(last_slot) == 20 and len(first) == len(np.unique(X.view(np.uint32), axis=0)) > 16
    assert np.array_equal(X[first][which].view(np.uint32), X.view(np.uint32))
    assert np.all(first[which] <= np.arange(len(X)))


def test_distinct_rows_refuses_rows_it_would_misread():
    with pytest.raises(ValueError, match="C-contiguous float32"):
        forest_kernel.distinct_rows(np.zeros((4, 3), dtype=np.float64))
    with pytest.raises(ValueError, match="C-contiguous float32"):
        forest_kernel.distinct_rows(np.zeros((4, 6), dtype=np.float32)[:, ::2])


@pytest.mark.parametrize("max_samples", [256, 9000])
def test_read_only_tables_and_rows_are_accepted(max_samples):
    """A Ray worker unpickles the detector from the object store: its arrays are read-only."""
    forest = _fitted(9000, 5, 8, n_estimators=20, max_samples=max_samples)
    compact = pickle.loads(pickle.dumps(compact_forest_from_sklearn(forest, 5)))
    for table in vars(compact._kernel).values():
        if isinstance(table, np.ndarray):
            table.setflags(write=False)
    probe = _probe(np.random.default_rng(8), 500, 5)
    probe.setflags(write=False)

    assert np.max(np.abs(compact.scores(probe) + forest.score_samples(probe))) <= TOLERANCE


def test_empty_input_gives_no_scores_and_a_wrong_width_is_refused():
    compact = compact_forest_from_sklearn(_fitted(500, 4, 6, n_estimators=10), 4)

    assert compact.scores(np.empty((0, 4), dtype=np.float32)).shape == (0,)
    for bad in (np.zeros((3, 5), np.float32), np.zeros((3, 3), np.float32), np.zeros(4, np.float32)):
        with pytest.raises(ValueError, match="expected rows of 4 features"):
            compact.scores(bad)


def test_non_contiguous_float64_rows_are_converted_not_misread():
    forest = _fitted(1500, 6, 7, n_estimators=30)
    compact = compact_forest_from_sklearn(forest, 6)
    wide = _probe(np.random.default_rng(7), 400, 12).astype(np.float64)
    rows = wide[::2, ::2]  # strided view

    expected = -forest.score_samples(np.ascontiguousarray(rows, dtype=np.float32))
    assert np.max(np.abs(compact.scores(rows) - expected)) <= TOLERANCE


def test_complete_layout_pads_a_shallow_leaf_to_its_leftmost_slot():
    """Root: x0 <= 0 -> leaf A (depth 1); else x1 <= 0 -> leaves B, C (depth 2)."""
    forest = CompactForest(
        children_left=np.array([1, -1, 3, -1, -1]),
        children_right=np.array([2, -1, 4, -1, -1]),
        feature=np.array([0, -2, 1, -2, -2]),
        threshold=np.array([0.0, -2.0, 0.0, -2.0, -2.0]),
        missing_go_to_left=np.zeros(5, dtype=bool),
        node_value=np.array([0.0, 10.0, 0.0, 20.0, 30.0]),
        tree_offsets=np.array([0, 5]),
        max_samples=4,
        n_features=2,
    )
    tables = forest._kernel

    assert tables.complete and forest.depth == 2
    assert tables.feature.tolist() == [[0, 0, 1]]
    assert tables.threshold.tolist() == [[0.0, math.inf, 0.0]]
    assert tables.value.tolist() == [[10.0, 10.0, 20.0, 30.0]]
    rows = np.array([[-1, 5], [-1, -5], [np.inf, -1], [np.inf, 1], [1, np.inf]], np.float32)
    assert forest.path_lengths(rows).tolist() == [10.0, 10.0, 20.0, 30.0, 30.0]


# ------------------------------------------------------- hand-made forests that pass validation


def _random_tree(rng: np.random.Generator, max_depth: int, n_features: int) -> dict[str, list]:
    """A random binary tree whose node ids are any parent-before-child order (not BFS)."""
    shapes: list[tuple[int, int]] = [(0, -1)]  # (depth, parent slot) per node, in creation order
    children: dict[int, list[int]] = {}
    frontier = [0]
    while frontier:
        node = frontier.pop(int(rng.integers(len(frontier))))
        depth = shapes[node][0]
        if depth < max_depth and (node == 0 or rng.random() < 0.7):
            pair = [len(shapes), len(shapes) + 1]
            shapes += [(depth + 1, node), (depth + 1, node)]
            children[node] = pair
            frontier += pair
    # Number nodes in a random parent-before-child order.
    order, ready = [], [0]
    while ready:
        node = ready.pop(int(rng.integers(len(ready))))
        order.append(node)
        ready += children.get(node, [])
    new_id = {old: new for new, old in enumerate(order)}
    specials = [np.inf, -np.inf, 1e300, -1e300, 3.4e38, 0.0, -0.0, 1e-45]
    tree: dict[str, list] = {k: [] for k in ("left", "right", "feature", "threshold", "missing", "value")}
    for old in order:
        pair = children.get(old)
        tree["left"].append(new_id[pair[0]] if pair else -1)
        tree["right"].append(new_id[pair[1]] if pair else -1)
        tree["feature"].append(int(rng.integers(n_features)) if pair else -2)
        special = rng.random() < 0.15
        tree["threshold"].append(float(rng.choice(specials)) if special else float(rng.normal()))
        tree["missing"].append(bool(rng.random() < 0.5))
        tree["value"].append(0.0 if pair else float(rng.uniform(0, 20)))
    return tree


def _random_forest(rng: np.random.Generator, n_trees: int, max_depth: int, n_features: int) -> CompactForest:
    trees = [_random_tree(rng, max_depth, n_features) for _ in range(n_trees)]
    sizes = [len(t["left"]) for t in trees]

    def cat(key: str, dtype: object) -> np.ndarray:
        return np.concatenate([np.asarray(t[key], dtype=dtype) for t in trees])

    return CompactForest(
        children_left=cat("left", np.int16),
        children_right=cat("right", np.int64),
        feature=cat("feature", np.int8),
        threshold=cat("threshold", np.float64),
        missing_go_to_left=cat("missing", np.uint8),
        node_value=cat("value", np.float64),
        tree_offsets=np.concatenate([[0], np.cumsum(sizes)]).astype(np.uint32),
        max_samples=64,
        n_features=n_features,
    )


def _reference_path_lengths(forest: CompactForest, X32: np.ndarray) -> np.ndarray:
    """scikit-learn's rules, one node at a time: float32 x <= float64 threshold goes left,
    NaN goes where missing_go_to_left says."""
    out = []
    for row in X32:
        total = 0.0
        for t in range(forest.n_trees):
            base, node = int(forest.tree_offsets[t]), 0
            while forest.children_left[base + node] != -1:
                g = base + node
                x = float(row[forest.feature[g]])
                left = bool(forest.missing_go_to_left[g]) if math.isnan(x) else x <= forest.threshold[g]
                node = int(forest.children_left[g] if left else forest.children_right[g])
            total += float(forest.node_value[base + node])
        out.append(total)
    return np.array(out)


def _edge_rows(rng: np.random.Generator, forest: CompactForest, n_rows: int) -> np.ndarray:
    """Random rows, rows on (and one float32 step around) thresholds, infinities, NaN."""
    n = forest.n_features
    rows = rng.normal(size=(n_rows, n)).astype(np.float32)
    inner = np.flatnonzero(forest.children_left != -1)
    picks = rng.choice(inner, size=n_rows)
    with np.errstate(over="ignore"):
        on = forest.threshold[picks].astype(np.float32)
    step = rng.integers(-1, 2, n_rows)  # one float32 below, exactly on, one above
    on = np.where(step == 0, on, np.nextafter(on, np.where(step < 0, -np.inf, np.inf).astype(np.float32)))
    rows[np.arange(n_rows), forest.feature[picks]] = on
    rows[rng.random(rows.shape) < 0.03] = np.inf
    rows[rng.random(rows.shape) < 0.03] = -np.inf
    rows[rng.random(rows.shape) < 0.02] = np.nan
    return rows


@pytest.mark.parametrize(("seed", "max_depth"), [(0, 3), (1, 8), (2, 12), (3, 15)])
def test_tables_of_any_validated_forest_stay_in_range_and_score_by_the_rules(seed, max_depth):
    rng = np.random.default_rng(seed)
    forest = _random_forest(rng, n_trees=12, max_depth=max_depth, n_features=5)
    tables = forest._kernel
    depth = forest.depth

    # What the kernel indexes without checks: features, and slots or node ids.
    assert tables.feature.dtype == np.uint32 and int(tables.feature.max()) < forest.n_features
    if tables.complete:
        assert tables.feature.shape == tables.threshold.shape == (forest.n_trees, 2**depth - 1)
        assert tables.value.shape == (forest.n_trees, 2**depth)
        leaf_values = set(forest.node_value[forest.children_left == -1].tolist())
        assert set(tables.value.ravel().tolist()) <= leaf_values
    else:
        assert tables.children is not None and tables.roots is not None
        assert int(tables.children.max()) < forest.n_nodes and int(tables.roots.max()) < forest.n_nodes
    assert tables.complete == (depth <= COMPLETE_MAX_DEPTH)

    rows = _edge_rows(rng, forest, 603)  # groups of 8 rows and 3 left over
    expected = _reference_path_lengths(forest, rows)
    assert np.array_equal(forest.path_lengths(rows), expected)
    assert np.array_equal(forest.path_lengths(rows, compiled=False), expected)


def test_nan_threshold_at_an_inner_node_is_refused():
    with pytest.raises(ValueError, match="'threshold' must not be NaN at inner nodes"):
        CompactForest(
            children_left=np.array([1, -1, -1]),
            children_right=np.array([2, -1, -1]),
            feature=np.array([0, -2, -2]),
            threshold=np.array([np.nan, -2.0, -2.0]),
            missing_go_to_left=np.array([True, False, False]),
            node_value=np.array([0.0, 1.0, 2.0]),
            tree_offsets=np.array([0, 3]),
            max_samples=2,
            n_features=1,
        )


# ------------------------------------------------------- loading and caching


@pytest.mark.integration  # a real subprocess, server or seconds of work
def test_importing_and_building_a_forest_does_not_import_numba_the_first_score_does():
    code = (
        "import sys, numpy as np\n"
        "import uba.model.forest\n"
        "from sklearn.ensemble import IsolationForest\n"
        "f = IsolationForest(n_estimators=5, random_state=0).fit(np.eye(8))\n"
        "c = uba.model.forest.compact_forest_from_sklearn(f, 8)\n"
        "assert 'numba' not in sys.modules, 'numba imported before the first score'\n"
        "assert c.scores(np.zeros((1, 8), np.float32)).shape == (1,)  # the API's probe at model load\n"
        "assert 'numba' in sys.modules and 'uba.model.kernel' in sys.modules\n"
        "from uba.model import kernel as forest_kernel\n"
        "assert forest_kernel._node_kernel.cache_info().currsize == 0, 'node loop compiled unasked'\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_without_a_writable_cache_the_loops_compile_in_memory(monkeypatch):
    real_njit = numba.njit

    def njit(*args, **kwargs):
        if kwargs.get("cache"):
            raise RuntimeError("cannot cache function 'f': no locator available for file 'x.py'")
        return real_njit(*args, **kwargs)

    monkeypatch.setattr(forest_kernel.numba, "njit", njit)

    def add(a, b):
        return a + b

    compiled = forest_kernel._compiled(numba.int64(numba.int64, numba.int64))(add)
    assert compiled(2, 3) == 5



def test_warm_up_self_check_passes():
    forest_kernel.warm_up()


@pytest.mark.parametrize("layout", ["C", "F", "feature-major"])
def test_compiled_scaling_is_bit_identical_to_numpy_in_any_layout(layout):
    """The scaler runs compiled; its float32 rows must be numpy's bit for bit, whatever the
    layout the caller holds (a shard passes a feature-major stack seen through ``.T``),
    including signed zeros, denormal and huge values, and overflow to infinity."""
    rng = np.random.default_rng(7)
    magnitudes = rng.choice([1e-310, 1e-30, 1.0, 1e10, 1e300], size=(1000, 17))
    X = rng.normal(size=(1000, 17)) * magnitudes
    X[0, 0], X[1, 1] = -0.0, np.inf
    mean = rng.normal(size=17) * 10
    scale = np.abs(rng.normal(size=17)) + 1e-3
    with np.errstate(over="ignore", invalid="ignore"):
        expected = ((X - mean) / scale).astype(np.float32)
    held = {"C": X, "F": np.asfortranarray(X), "feature-major": np.ascontiguousarray(X.T).T}[layout]
    got = forest_kernel.scaled_rows(held, mean, scale)
    assert got.flags.c_contiguous and got.dtype == np.float32
    assert got.view(np.uint32).tobytes() == expected.view(np.uint32).tobytes()


@pytest.mark.integration  # a real subprocess
def test_the_compiled_loops_load_without_scipy_and_scipy_still_imports_after() -> None:
    """numba's BLAS probe would import scipy.linalg (a third of a worker's numba import);
    the loops need no BLAS, so the forest loads them without it, and scipy.linalg imports
    normally afterwards in the same process."""
    code = (
        "import sys\n"
        "from uba.model.forest import import_compiled_loops\n"
        "import_compiled_loops()\n"
        "assert 'numba' in sys.modules and 'uba.model.kernel' in sys.modules\n"
        "assert not any(m == 'scipy.linalg' or m.startswith('scipy.linalg.') for m in sys.modules), 'scipy.linalg'\n"
        "from uba.model import kernel\n"
        "kernel.warm_up()\n"
        "import scipy.linalg.cython_blas\n"
        "import numpy as np, scipy.linalg\n"
        "print(float(scipy.linalg.det(np.eye(2))))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "1.0"


@pytest.mark.integration  # a real subprocess loading a real bundle and snapshot
def test_the_api_loads_the_twin_search_with_its_model_not_in_its_first_batch(serving_world) -> None:
    """A batch of 64 rows or more (/predict/batch, or coalesced /predict requests) searches
    for twins; without this the first such request compiled that loop on the event loop
    (about 4 s without numba's cache) and stalled every other request meanwhile."""
    code = (
        "from uba.api.state import load_state\n"
        "from uba.settings import load_settings\n"
        "from uba.model import kernel\n"
        "load_state(load_settings())\n"
        "assert kernel._distinct_kernel.cache_info().currsize == 1, 'twin search not loaded with the model'\n"
    )
    done = subprocess.run([sys.executable, "-c", code], env=serving_world.env(), capture_output=True, text=True,
                          timeout=300, check=False)
    assert done.returncode == 0, done.stderr


@pytest.mark.integration  # a real subprocess
def test_a_ray_workers_warm_up_loads_every_loop_a_shard_runs_and_the_api_only_its_own() -> None:
    """A shard ranks reasons with a compiled loop too: the worker's warm-up (run while the
    driver builds the baselines) loads it beside the forest's, so the first shard of a
    worker without numba's cache does not compile it; the API, which ranks with numpy,
    does not load it with its model."""
    code = (
        "from uba.model.forest import import_compiled_loops\n"
        "from uba.model import kernel\n"
        "import_compiled_loops()\n"
        "assert kernel._rank_kernel.cache_info().currsize == 0, 'API loads the shard ranking'\n"
        "from uba.scoring.ray_worker import warm_up\n"
        "warm_up()\n"
        "assert kernel._distinct_kernel.cache_info().currsize == 1, 'twin search not loaded'\n"
        "assert kernel._rank_kernel.cache_info().currsize == 1, 'reason ranking not loaded'\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
