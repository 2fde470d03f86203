"""Compiled (numba) scoring loops of the compact forest.

Why compiled: numpy walks a forest with a few whole-array calls per tree level, which
runs at about scikit-learn's own speed; a loop that keeps one tree's tables and a block
of rows in L1 cache and walks several rows at once is several times faster per core.

Two layouts, both prepared by :mod:`uba.model.forest` from the validated forest arrays:

* **complete**: every tree re-laid as a complete binary tree of the forest's depth D
  (inner slots ``0 .. 2**D - 2``, leaves ``0 .. 2**D - 1``). A row takes exactly D
  branch-free steps ``i = 2 i + 1 + (x[feature[i]] > threshold[i])``; a leaf shallower
  than D was padded by the builder with ``+inf`` thresholds (always go left).
* **node**: scikit-learn's own node arrays (global ids, leaves pointing at themselves),
  for forests too deep for a complete layout: ``i = children[2 i + (x > threshold)]``.

Both add the per-tree path lengths of a row in tree order starting from 0.0, as
scikit-learn's ``depths +=`` does, so the sums are bit-identical to its own.

The complete-layout loop copies each block of rows feature-major into a scratch buffer
and walks it with ``offset`` = feature x block rows (made once per forest): one base
register then serves all 8 rows walked side by side, where 8 row pointers had spilled
to the stack and cost a load per step (about 8% of the loop on an AMD EPYC).

Safety: the loops index without bounds checks. They are only ever given tables whose
every index is in range by construction (``uba.model.forest`` builds them after
``_check_forest_arrays``), and the wrappers below check shapes and the row width before
calling them. Rows holding NaN are not routed here (``uba.model.forest`` scores them with the
numpy path, which implements scikit-learn's missing-value routing).

One loop is not the forest's: ``_rank_loop`` ranks every row's reason kinds for a batch
shard (``uba.features.reasons.reason_kinds_column``), kept here so it is compiled, cached
and warmed up with the others.

Compiling: importing this module imports numba and compiles the complete-layout loop
(the node, twin-search and ranking loops on their first use), or loads them from numba's
cache (``NUMBA_CACHE_DIR`` in the image); without a writable cache location they are
compiled in memory once per process. ``uba.model.forest`` imports this module only when it first scores.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from typing import Any

import numba
import numpy as np
import numpy.typing as npt

# numba's types and compiled dispatchers carry no static types: the helpers that build
# or return them say Any, and the loops' arguments are typed by their numba signatures.
FloatArray = npt.NDArray[np.float64]
Rows32 = npt.NDArray[np.float32]
Index32 = npt.NDArray[np.uint32]

# Rows per block: a block of float32 rows should stay in L1 (with one tree's tables)
# while every tree walks it.
_BLOCK_BYTES = 16 * 1024
_MAX_BLOCK_ROWS = 1024
# The complete-layout loop's feature-major copy of a block (see complete_block_rows):
# for 18 features, blocks of 256 rows (18 KB) measured a little faster than 128 or 64.
_COMPLETE_BLOCK_BYTES = 24 * 1024
_COMPLETE_MAX_BLOCK_ROWS = 256
# Rows walked side by side (see _complete_kernel): independent chains of dependent
# loads let the CPU overlap them; 8 measured about as fast as 16 and reads better.
_LANES = 8


def _readonly(dtype: Any, ndim: int) -> Any:
    """A C-contiguous array the loops only read: accepts writable arrays too, and the
    read-only ones a Ray worker gets from the object store (unpickled detectors)."""
    return numba.types.Array(dtype, ndim, "C", readonly=True)


_ROWS = _readonly(numba.float32, 2)
_OUT = numba.types.Array(numba.float64, 1, "C")
_COMPLETE_SIGNATURE = numba.int64(
    _ROWS,
    _readonly(numba.uint32, 2),  # feature
    _readonly(numba.uint32, 2),  # offset: feature x rows per block
    _readonly(numba.float32, 2),  # threshold
    _readonly(numba.float64, 2),  # leaf value
    numba.int64,  # depth
    numba.int64,  # rows per block
    _OUT,
)
_NODE_SIGNATURE = numba.int64(
    _ROWS,
    _readonly(numba.uint32, 1),  # children
    _readonly(numba.uint32, 1),  # feature
    _readonly(numba.float32, 1),  # threshold
    _readonly(numba.float64, 1),  # node value
    _readonly(numba.uint32, 1),  # roots
    numba.int64,  # depth
    numba.int64,  # rows per block
    _OUT,
)


# Any layout (the shard passes a feature-major stack seen as rows, the API one C row).
_SCALE_SIGNATURE = numba.void(
    numba.types.Array(numba.float64, 2, "A", readonly=True),  # raw feature rows
    _readonly(numba.float64, 1),  # mean
    _readonly(numba.float64, 1),  # scale
    numba.int64,  # rows per block
    numba.types.Array(numba.float32, 2, "C"),  # out
)


def _compiled(signature: Any) -> Callable[[Callable[..., Any]], Any]:
    """``njit`` with an explicit signature, cached on disk when a cache location is writable.

    numba refuses ``cache=True`` outright (RuntimeError) when neither ``NUMBA_CACHE_DIR``
    nor the package directory nor ``~/.cache`` is writable; scoring then still works,
    compiling in memory once per process.
    """

    def wrap(fn: Callable[..., Any]) -> Any:
        try:
            return numba.njit(signature, cache=True, nogil=True)(fn)
        except RuntimeError:
            return numba.njit(signature, nogil=True)(fn)

    return wrap


@numba.njit(inline="always")
def _rows_with_nan(X: Any) -> Any:
    """How many rows hold a NaN (their sums are meaningless: ``x > t`` is false for NaN,
    while scikit-learn routes NaN per node; the caller rescores them with numpy)."""
    count = 0
    for r in range(X.shape[0]):
        for c in range(X.shape[1]):
            if np.isnan(X[r, c]):
                count += 1
                break
    return count


@numba.njit(inline="always")
def _complete_step(x: Any, feature: Any, threshold: Any, i: Any) -> Any:
    """One level down a complete tree; unsigned so numba adds no negative-index fix-up."""
    return i + i + np.uint64(1) + np.uint64(x[feature[i]] > threshold[i])


@numba.njit(inline="always")
def _block_step(block: Any, row: Any, offset: Any, threshold: Any, i: Any) -> Any:
    """One level down for the row at ``row`` of a feature-major block (``offset[i]`` is
    the node's feature times the block's rows, so ``row`` stays a constant displacement)."""
    return i + i + np.uint64(1) + np.uint64(block[row + np.uint64(offset[i])] > threshold[i])


@numba.njit(inline="always")
def _block_root_step(block: Any, row: Any, offset: Any, threshold: Any) -> Any:
    """The first step (slot 0 to slot 1 or 2) of a block row, with the root's offset and
    threshold."""
    return np.uint64(1) + np.uint64(block[row + offset] > threshold)


@numba.njit(inline="always")
def _copy_feature_major(X: Any, start: Any, rows: Any, block_rows: Any, out: Any) -> None:
    """Rows ``start .. start + rows`` of ``X`` into ``out`` as ``out[c * block_rows + r]``."""
    n_cols = X.shape[1]
    for r in range(rows):
        for c in range(n_cols):
            out[c * block_rows + r] = X[start + r, c]


@numba.njit(inline="always")
def _complete_row(x: Any, feature: Any, threshold: Any, leaf_value: Any, depth: Any) -> Any:
    """One row's summed path length, 8 trees walked side by side (in tree order).

    For the rows left over after the groups of 8 (one row per API request): a lone row
    walked tree after tree would wait on each step's loads; different trees do not.
    """
    n_trees, n_inner = feature.shape[0], np.uint64(feature.shape[1])
    total = 0.0
    t = 0
    while t + 8 <= n_trees:
        f0, f1, f2, f3 = feature[t], feature[t + 1], feature[t + 2], feature[t + 3]
        f4, f5, f6, f7 = feature[t + 4], feature[t + 5], feature[t + 6], feature[t + 7]
        h0, h1, h2, h3 = threshold[t], threshold[t + 1], threshold[t + 2], threshold[t + 3]
        h4, h5, h6, h7 = threshold[t + 4], threshold[t + 5], threshold[t + 6], threshold[t + 7]
        i0 = i1 = i2 = i3 = i4 = i5 = i6 = i7 = np.uint64(0)
        for _ in range(depth):
            i0 = _complete_step(x, f0, h0, i0)
            i1 = _complete_step(x, f1, h1, i1)
            i2 = _complete_step(x, f2, h2, i2)
            i3 = _complete_step(x, f3, h3, i3)
            i4 = _complete_step(x, f4, h4, i4)
            i5 = _complete_step(x, f5, h5, i5)
            i6 = _complete_step(x, f6, h6, i6)
            i7 = _complete_step(x, f7, h7, i7)
        total += leaf_value[t, i0 - n_inner]
        total += leaf_value[t + 1, i1 - n_inner]
        total += leaf_value[t + 2, i2 - n_inner]
        total += leaf_value[t + 3, i3 - n_inner]
        total += leaf_value[t + 4, i4 - n_inner]
        total += leaf_value[t + 5, i5 - n_inner]
        total += leaf_value[t + 6, i6 - n_inner]
        total += leaf_value[t + 7, i7 - n_inner]
        t += 8
    while t < n_trees:
        i = np.uint64(0)
        for _ in range(depth):
            i = _complete_step(x, feature[t], threshold[t], i)
        total += leaf_value[t, i - n_inner]
        t += 1
    return total


@_compiled(_COMPLETE_SIGNATURE)
def _complete_kernel(X: Rows32, feature: Index32, offset: Index32, threshold: Rows32, leaf_value: FloatArray,
                     depth: int, block: int, out: FloatArray) -> int:
    """Trees outer, rows inner per block of ``block`` rows copied feature-major into a
    scratch buffer, 8 rows (_LANES) walked side by side; written out because numba keeps
    these scalars in registers, while a small index array would go through memory
    (measured ~15% slower). The root's offset and threshold are read once per tree
    (~5%). Rows left over (< 8) go tree-wise from ``X``. Needs depth >= 1 and
    ``offset == feature * block`` (every offset then lies inside the buffer)."""
    n_rows, n_trees = X.shape[0], feature.shape[0]
    n_inner = np.uint64(feature.shape[1])
    nan_rows: int = _rows_with_nan(X)
    buf = np.empty(X.shape[1] * block, dtype=np.float32)
    for start in range(0, n_rows, block):
        stop = min(n_rows, start + block)
        grouped = (stop - start) - (stop - start) % 8
        _copy_feature_major(X, start, grouped, block, buf)
        for r in range(start, start + grouped):
            out[r] = 0.0
        for t in range(n_trees):
            f = offset[t]
            th = threshold[t]
            leaf = leaf_value[t]
            f_root, th_root = np.uint64(f[0]), th[0]
            for r in range(0, grouped, 8):
                p = np.uint64(r)
                i0 = _block_root_step(buf, p, f_root, th_root)
                i1 = _block_root_step(buf, p + np.uint64(1), f_root, th_root)
                i2 = _block_root_step(buf, p + np.uint64(2), f_root, th_root)
                i3 = _block_root_step(buf, p + np.uint64(3), f_root, th_root)
                i4 = _block_root_step(buf, p + np.uint64(4), f_root, th_root)
                i5 = _block_root_step(buf, p + np.uint64(5), f_root, th_root)
                i6 = _block_root_step(buf, p + np.uint64(6), f_root, th_root)
                i7 = _block_root_step(buf, p + np.uint64(7), f_root, th_root)
                for _ in range(depth - 1):
                    i0 = _block_step(buf, p, f, th, i0)
                    i1 = _block_step(buf, p + np.uint64(1), f, th, i1)
                    i2 = _block_step(buf, p + np.uint64(2), f, th, i2)
                    i3 = _block_step(buf, p + np.uint64(3), f, th, i3)
                    i4 = _block_step(buf, p + np.uint64(4), f, th, i4)
                    i5 = _block_step(buf, p + np.uint64(5), f, th, i5)
                    i6 = _block_step(buf, p + np.uint64(6), f, th, i6)
                    i7 = _block_step(buf, p + np.uint64(7), f, th, i7)
                o = start + r
                out[o] += leaf[i0 - n_inner]
                out[o + 1] += leaf[i1 - n_inner]
                out[o + 2] += leaf[i2 - n_inner]
                out[o + 3] += leaf[i3 - n_inner]
                out[o + 4] += leaf[i4 - n_inner]
                out[o + 5] += leaf[i5 - n_inner]
                out[o + 6] += leaf[i6 - n_inner]
                out[o + 7] += leaf[i7 - n_inner]
        for r in range(start + grouped, stop):
            out[r] = _complete_row(X[r], feature, threshold, leaf_value, depth)
    return nan_rows


@_compiled(_SCALE_SIGNATURE)
def _scale_kernel(X: FloatArray, mean: FloatArray, scale: FloatArray, block: int, out: Rows32) -> None:
    """Blocks of rows, features outer within a block: a feature-major input is then read
    in runs and the block's output stays in cache. ``(x - mean) / scale`` in float64 and
    one cast to float32, the operations numpy performs, so the values are bit-identical."""
    n_rows, n_cols = X.shape
    for start in range(0, n_rows, block):
        stop = min(n_rows, start + block)
        for c in range(n_cols):
            m, s = mean[c], scale[c]
            for r in range(start, stop):
                out[r, c] = np.float32((X[r, c] - m) / s)


@numba.njit(inline="always")
def _node_step(x: Any, children: Any, feature: Any, threshold: Any, i: Any) -> Any:
    """One level down scikit-learn's node arrays (a leaf's children are itself)."""
    return np.uint64(children[i + i + np.uint64(x[feature[i]] > threshold[i])])


def _node_loop(X: Rows32, children: Index32, feature: Index32, threshold: Rows32, node_value: FloatArray,
               roots: Index32, depth: int, block: int, out: FloatArray) -> int:
    """Same loop order as _complete_kernel, over the node arrays (one more load per step)."""
    n_rows, n_trees = X.shape[0], roots.shape[0]
    nan_rows: int = _rows_with_nan(X)
    for start in range(0, n_rows, block):
        stop = min(n_rows, start + block)
        for r in range(start, stop):
            out[r] = 0.0
        for t in range(n_trees):
            root = np.uint64(roots[t])
            r = start
            while r + 4 <= stop:
                x0, x1, x2, x3 = X[r], X[r + 1], X[r + 2], X[r + 3]
                i0 = i1 = i2 = i3 = root
                for _ in range(depth):
                    i0 = _node_step(x0, children, feature, threshold, i0)
                    i1 = _node_step(x1, children, feature, threshold, i1)
                    i2 = _node_step(x2, children, feature, threshold, i2)
                    i3 = _node_step(x3, children, feature, threshold, i3)
                out[r] += node_value[i0]
                out[r + 1] += node_value[i1]
                out[r + 2] += node_value[i2]
                out[r + 3] += node_value[i3]
                r += 4
            while r < stop:
                x = X[r]
                i = root
                for _ in range(depth):
                    i = _node_step(x, children, feature, threshold, i)
                out[r] += node_value[i]
                r += 1
    return nan_rows


@cache
def _node_kernel() -> Any:
    """_node_loop compiled on first use: only forests deeper than the complete layout's
    cap need it, so most processes never pay its compile (about half a cold start)."""
    return _compiled(_NODE_SIGNATURE)(_node_loop)


# Hashing rows' bits (see _distinct_loop): a 64-bit multiply-add per column, then a
# final avalanche so that the low bits that pick a slot depend on every column.
_HASH_SEED = np.uint64(0x9E3779B97F4A7C15)
_HASH_MULTIPLIER = np.uint64(0xBF58476D1CE4E5B9)
_AVALANCHE_MULTIPLIER = np.uint64(0x94D049BB133111EB)
_BUCKET_ROWS = 4096
# Probe steps a search may take per row on average before it gives up (_distinct_loop).
# Rows of random hashes take about 1.3; rows crafted to share one hash (the hash is no
# secret and not cryptographic: 2**k distinct rows of 3k columns sharing all 64 bits
# take a minute's search) would take a step and a row compare for each row met before.
_PROBES_PER_ROW = 32
_DISTINCT_SIGNATURE = numba.int64(
    _readonly(numba.uint32, 2),  # the rows' float32 bits
    numba.types.Array(numba.int64, 1, "C"),  # first: the row where each distinct row first appears
    numba.types.Array(numba.int64, 1, "C"),  # which: each row's distinct row
)


@numba.njit(inline="always")
def _row_hash(bits: Any, r: Any) -> Any:
    h = _HASH_SEED
    for c in range(bits.shape[1]):
        h = (h + np.uint64(bits[r, c])) * _HASH_MULTIPLIER
        h ^= h >> np.uint64(31)
    h ^= h >> np.uint64(30)
    h *= _AVALANCHE_MULTIPLIER
    return h ^ (h >> np.uint64(31))


@numba.njit(inline="always")
def _same_row(bits: Any, a: Any, b: Any) -> Any:
    # a loop, not all(<generator>): numba compiles no generator expression into a call
    for c in range(bits.shape[1]):  # noqa: SIM110
        if bits[a, c] != bits[b, c]:
            return False
    return True


@numba.njit(inline="always")
def _power_of_two_at_least(n: Any) -> Any:
    size = 1
    while size < n:
        size *= 2
    return size


@numba.njit(inline="always")
def _bucket_bits(n_rows: Any) -> Any:
    """Bits of the hash that pick a row's bucket: buckets of about _BUCKET_ROWS rows."""
    bits = 0
    while (n_rows >> bits) > _BUCKET_ROWS:
        bits += 1
    return bits


@numba.njit(inline="always")
def _bucket(h: Any, bucket_bits: Any) -> Any:
    """The top ``bucket_bits`` (at most 24) bits of a hash, as a signed index."""
    return np.int64(h >> np.uint64(40)) >> (24 - bucket_bits)


def _distinct_loop(bits: npt.NDArray[np.uint32], first: npt.NDArray[np.int64], which: npt.NDArray[np.int64]) -> int:
    """Rows hashed once, grouped by the top bits of their hash into buckets of a few
    thousand rows, then each bucket deduplicated with a small open-addressing table
    (linear probing, twice the bucket's rows) that stays in L2: one table for 250 k rows
    (4 MB) cost about 270 ns a row here against 55 ns for 50 k. A slot holds hash bits
    16-47 and the row number + 1, so a probe meeting another row's slot is told apart
    without reading that row; equal hash bits are then checked bit for bit, so a
    collision costs a compare, never a wrong answer. Distinct rows are numbered bucket
    by bucket; ``first`` holds each one's first row. Needs fewer than 2**32 rows.

    Returns -1 (``first`` and ``which`` then mean nothing) after _PROBES_PER_ROW probe
    steps a row: n rows sharing one hash would otherwise cost n**2 / 2 row compares
    (5 * 10**9 for 100 k rows), all in one bucket of one shard."""
    n_rows = bits.shape[0]
    probes_left = _PROBES_PER_ROW * n_rows
    hashes = np.empty(n_rows, dtype=np.uint64)
    for r in range(n_rows):
        hashes[r] = _row_hash(bits, r)
    bucket_bits = _bucket_bits(n_rows)
    n_buckets = 1 << bucket_bits
    starts = np.zeros(n_buckets + 1, dtype=np.int64)
    for r in range(n_rows):
        starts[_bucket(hashes[r], bucket_bits) + 1] += 1
    for b in range(n_buckets):
        starts[b + 1] += starts[b]
    order = np.empty(n_rows, dtype=np.int64)
    filled = starts[:-1].copy()
    for r in range(n_rows):
        b = _bucket(hashes[r], bucket_bits)
        order[filled[b]] = r
        filled[b] += 1
    low = np.uint64(0xFFFFFFFF)
    table = np.zeros(_power_of_two_at_least(2 * max(1, np.max(starts[1:] - starts[:-1]))), dtype=np.uint64)
    count = 0
    for b in range(n_buckets):
        size = _power_of_two_at_least(2 * (starts[b + 1] - starts[b]))
        mask = np.uint64(size - 1)
        table[:size] = 0
        for j in range(starts[b], starts[b + 1]):
            r = order[j]
            h = hashes[r]
            tag = (h >> np.uint64(16)) << np.uint64(32)
            slot = h & mask
            while True:
                probes_left -= 1
                if probes_left < 0:
                    return -1
                entry = table[slot]
                if entry == 0:
                    table[slot] = tag | np.uint64(r + 1)
                    first[count] = r
                    which[r] = count
                    count += 1
                    break
                if entry & ~low == tag:
                    seen = np.int64(entry & low) - 1
                    if _same_row(bits, seen, r):
                        which[r] = which[seen]
                        break
                slot = (slot + np.uint64(1)) & mask
    return count


def load_batch_loops() -> None:
    """Compile (or load from numba's cache) the loops only batches use, ahead of the first."""
    _distinct_kernel()


@cache
def _distinct_kernel() -> Any:
    """_distinct_loop compiled on first use: batches of 64 rows or more need it (shards,
    the API's /predict/batch and coalesced groups, which load it with the model); one
    row never does."""
    return _compiled(_DISTINCT_SIGNATURE)(_distinct_loop)


def distinct_rows(X32: Rows32) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """``(first, which)``: ``X32[first]`` are the distinct rows (each at its first
    appearance, in no particular order) and ``X32[first][which]`` is ``X32`` again.

    Rows are the same when their float32 bits are: the forest sees nothing else, so a
    row's path length is its twin's, to the bit (NaN rows with the same bits go together
    too; 0.0 and -0.0 stay apart, which costs at most a duplicate walk). When the search
    gives up (rows crafted to share a hash, see _distinct_loop), every row is its own.
    """
    if X32.ndim != 2 or X32.dtype != np.float32 or not X32.flags.c_contiguous:
        raise ValueError("distinct_rows needs C-contiguous float32 rows")
    if X32.shape[0] >= 1 << 32:
        raise ValueError("distinct_rows takes fewer than 2**32 rows at a time")
    first = np.empty(X32.shape[0], dtype=np.int64)
    which = np.empty(X32.shape[0], dtype=np.int64)
    count = _distinct_kernel()(X32.view(np.uint32), first, which)
    if count < 0:
        return _every_row_its_own(X32.shape[0])
    return first[:count], which


def _every_row_its_own(n_rows: int) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """``(first, which)`` with no twins: what the caller gets when the search gave up, so
    it walks every row (the scores are the same, only the shortcut is lost)."""
    rows = np.arange(n_rows, dtype=np.int64)
    return rows, rows.copy()


def _block_rows(n_columns: int) -> int:
    """Rows per block so one block of float32 rows fits _BLOCK_BYTES, a multiple of _LANES."""
    rows = _BLOCK_BYTES // (4 * max(1, n_columns))
    return max(_LANES, min(_MAX_BLOCK_ROWS, rows - rows % _LANES))


def complete_block_rows(n_columns: int) -> int:
    """Rows per block of the complete-layout loop for rows of ``n_columns`` features: a
    power of two whose feature-major copy fits _COMPLETE_BLOCK_BYTES, at least _LANES.
    The tables' offsets are built with it (``uba.model.forest``), so it must depend on
    the row width only."""
    rows = _COMPLETE_MAX_BLOCK_ROWS
    while rows > _LANES and rows * 4 * max(1, n_columns) > _COMPLETE_BLOCK_BYTES:
        rows //= 2
    return rows


def complete_offsets(feature: Index32, n_columns: int) -> Index32:
    """``feature`` times the block rows for rows of ``n_columns`` features: what
    :func:`complete_path_lengths` walks a block with."""
    return (feature.astype(np.uint32) * np.uint32(complete_block_rows(n_columns))).astype(np.uint32)


def complete_path_lengths(
    X32: Rows32,
    feature: Index32,
    offset: Index32,
    threshold: Rows32,
    leaf_value: FloatArray,
) -> tuple[FloatArray, int]:
    """Summed path length per row over complete-layout trees, and how many rows hold NaN.

    ``feature``/``threshold`` are ``(n_trees, 2**D - 1)``, ``leaf_value`` is
    ``(n_trees, 2**D)``, ``feature`` holds only columns of ``X32`` and ``offset`` is
    ``complete_offsets(feature, X32.shape[1])`` (the builder in ``uba.model.forest``
    guarantees both). The sums of rows holding NaN are not scikit-learn's.
    """
    n_trees, n_inner = feature.shape
    depth = n_inner.bit_length()  # n_inner = 2**depth - 1
    if (
        X32.ndim != 2
        or threshold.shape != feature.shape
        or offset.shape != feature.shape
        or leaf_value.shape != (n_trees, n_inner + 1)
        or n_inner + 1 != 1 << depth
    ):
        raise ValueError("complete-layout tables of inconsistent shapes")
    if depth == 0:  # single-leaf trees: every row, NaN or not, ends at the roots
        return np.full(X32.shape[0], np.cumsum(leaf_value[:, 0])[-1]), 0
    out = np.empty(X32.shape[0], dtype=np.float64)
    nan_rows = _complete_kernel(
        X32, feature, offset, threshold, leaf_value, depth, complete_block_rows(X32.shape[1]), out
    )
    return out, int(nan_rows)


def node_path_lengths(
    X32: Rows32,
    children: Index32,
    feature: Index32,
    threshold: Rows32,
    node_value: FloatArray,
    roots: Index32,
    depth: int,
) -> tuple[FloatArray, int]:
    """Summed path length per row over scikit-learn's node arrays, and how many rows hold NaN.

    Node ids are global; ``children[2 g]``/``children[2 g + 1]`` are node ``g``'s left and
    right child (a leaf's are itself). Every id, root and feature must be in range (the
    builder in ``uba.model.forest`` guarantees it after the forest arrays were validated).
    """
    n_nodes = feature.shape[0]
    if (
        X32.ndim != 2
        or children.shape != (2 * n_nodes,)
        or threshold.shape != (n_nodes,)
        or node_value.shape != (n_nodes,)
    ):
        raise ValueError("node tables of inconsistent shapes")
    out = np.empty(X32.shape[0], dtype=np.float64)
    nan_rows = _node_kernel()(
        X32, children, feature, threshold, node_value, roots, depth, _block_rows(X32.shape[1]), out
    )
    return out, int(nan_rows)


def scaled_rows(X: FloatArray, mean: FloatArray, scale: FloatArray) -> Rows32:
    """StandardScaler.transform then the float32 cast, in one pass over ``X`` (any memory
    layout) with no float64 temporaries; bit-identical to
    ``((X - mean) / scale).astype(np.float32)``."""
    if X.ndim != 2 or mean.shape != (X.shape[1],) or scale.shape != (X.shape[1],):
        raise ValueError(f"cannot scale an array of shape {X.shape} with {mean.shape[0]} means")
    out = np.empty(X.shape, dtype=np.float32)
    _scale_kernel(X, mean, scale, _block_rows(X.shape[1]), out)
    return out


# Any layout: a shard's severities are filled kind by kind (``uba.features.reasons``) and
# seen through ``.T``.
_RANK_SIGNATURE = numba.int64(
    numba.types.Array(numba.float64, 2, "A", readonly=True),  # severity: rows x kinds
    numba.int64,  # max_reasons
    numba.float64,  # the severity a kind needs to be listed beside a stronger one
    numba.float64,  # the severity the strongest kind needs to be listed at all
    numba.types.Array(numba.uint8, 1, "C"),  # listed: each row's listed kinds, row after row
    numba.types.Array(numba.int64, 1, "C"),  # counts: how many kinds each row lists
)


def _rank_loop(severity: FloatArray, max_reasons: int, min_severity: float, min_top_severity: float,
               listed: npt.NDArray[np.uint8], counts: npt.NDArray[np.int64]) -> int:
    """The rule of ``uba.features.reasons.rank_reason_kinds``, row by row: the strongest
    severity ``top`` (NaN skipped); the kinds at or above ``max(min(top, min_severity),
    min_top_severity)``, at most ``max_reasons``, none when ``top`` is below
    ``min_top_severity`` (or every severity is NaN). They are picked strongest first, the
    lowest kind among equals first: the head of numpy's stable ``argsort`` of the negated
    severities, without sorting the kinds nobody lists (most rows list none or one).
    Writes them into ``listed`` (room for rows x min(kinds, max_reasons)) and returns
    their total."""
    n_rows, n_kinds = severity.shape
    most = min(n_kinds, max(0, max_reasons))
    total = 0
    for r in range(n_rows):
        top = -np.inf
        for k in range(n_kinds):
            if severity[r, k] > top:
                top = severity[r, k]
        count = 0
        keep_from = max(min(top, min_severity), min_top_severity)
        if top >= min_top_severity:
            for k in range(n_kinds):
                if severity[r, k] >= keep_from:
                    count += 1
            count = min(count, most)
        taken = 0
        for i in range(count):
            best = -1
            for k in range(n_kinds):
                value = severity[r, k]
                if value >= keep_from and not (taken >> k) & 1 and (best < 0 or value > severity[r, best]):
                    best = k
            taken |= 1 << best
            listed[total + i] = best
        counts[r] = count
        total += count
    return total


@cache
def _rank_kernel() -> Any:
    """_rank_loop compiled on first use: the batch shards rank every row's reasons with it
    (``uba.features.reasons.reason_kinds_column``); the API ranks with numpy."""
    return _compiled(_RANK_SIGNATURE)(_rank_loop)


def load_shard_loops() -> None:
    """Compile (or load from numba's cache) every loop a batch shard runs, ahead of its first."""
    load_batch_loops()
    _rank_kernel()


def ranked_kinds(severity: FloatArray, max_reasons: int, min_severity: float,
                 min_top_severity: float) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.int64]]:
    """``(listed, counts)``: each row's listed kind columns, strongest first, row after row
    (``listed[sum(counts[:r]):][:counts[r]]`` are row ``r``'s), by the rule of
    ``_rank_loop``. ``severity`` is rows x kinds, float64, in any memory layout."""
    if severity.ndim != 2 or severity.dtype != np.float64 or not 0 < severity.shape[1] <= 64:
        raise ValueError(f"ranked_kinds needs float64 rows x (1 to 64) kinds, not {severity.dtype} "
                         f"of shape {severity.shape}")
    n_rows, n_kinds = severity.shape
    listed = np.empty(n_rows * min(n_kinds, max(0, max_reasons)), dtype=np.uint8)
    counts = np.empty(n_rows, dtype=np.int64)
    total = _rank_kernel()(severity, max_reasons, min_severity, min_top_severity, listed, counts)
    return listed[:total], counts


def warm_up() -> None:
    """Run every loop on one row of a one-split tree (the distinct-rows loop on three rows,
    the reason ranking on four) and check the answers.

    Compiles them all (or loads them from numba's cache): the image runs this at build
    time so its cache holds them and is known good.
    """
    X = np.array([[0.0, 1.0]], dtype=np.float32)  # column 1 > 0.5: the right leaf, value 2
    X8 = np.repeat(X, _LANES, axis=0)  # and a group of 8 rows, through the blocked walk
    feature = np.array([[1]], dtype=np.uint32)
    complete, _ = complete_path_lengths(
        np.concatenate([X8, X]),
        feature=feature,
        offset=complete_offsets(feature, X.shape[1]),
        threshold=np.array([[0.5]], dtype=np.float32),
        leaf_value=np.array([[1.0, 2.0]]),
    )
    node, _ = node_path_lengths(
        X,
        children=np.array([1, 2, 1, 1, 2, 2], dtype=np.uint32),
        feature=np.array([1, 0, 0], dtype=np.uint32),
        threshold=np.array([0.5, 0.0, 0.0], dtype=np.float32),
        node_value=np.array([0.0, 1.0, 2.0]),
        roots=np.array([0], dtype=np.uint32),
        depth=1,
    )
    scaled = scaled_rows(np.array([[3.0, 1.0]]), mean=np.array([1.0, 1.0]), scale=np.array([2.0, 4.0]))
    first, which = distinct_rows(np.array([[0.0, 1.0], [-0.0, 1.0], [0.0, 1.0]], dtype=np.float32))
    if complete.tolist() != [2.0] * (_LANES + 1) or node.tolist() != [2.0] or scaled.tolist() != [[1.0, 0.0]]:
        raise RuntimeError(f"forest kernel self-check failed: {complete} {node} {scaled}")
    if sorted(first.tolist()) != [0, 1] or which[0] != which[2] or which[0] == which[1]:
        raise RuntimeError(f"distinct rows self-check failed: {first} {which}")
    # a tie ranked in kind order, a lone kind above one sigma, a row under it, a NaN skipped
    listed, counts = ranked_kinds(np.array([[2.0, 3.0, 3.0], [0.5, 1.5, 0.0], [0.9, 0.0, 0.5], [np.nan, 2.0, 1.0]]),
                                  2, 2.0, 1.0)
    if listed.tolist() != [1, 2, 1, 1] or counts.tolist() != [2, 1, 0, 1]:
        raise RuntimeError(f"reason ranking self-check failed: {listed} {counts}")
