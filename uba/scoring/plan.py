"""Split a day into shards from Parquet metadata alone.

The driver never reads a day's rows: it lists the partition's part files (sorted by
name) and reads each one's footer for its row count. A shard is a run of consecutive
row ranges ("pieces") of at most ``shard_rows`` events, cut at fixed offsets from the
start of each file (``0, shard_rows, 2 * shard_rows, ...``) and packed greedily, small
files together, in file order.

Why fixed offsets: a shard writes its own output part, so the set of parts and their
bytes must depend on the data only. The plan is a function of the file names, their
row counts and one setting; the worker count, node count and execution mode never
enter it, so in-process, an embedded Ray and a cluster publish identical files. The
default ``shard_rows`` (262,144) is Polars' default row-group size, so a piece of a file
written by ingest decodes exactly one row group.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq

from uba.errors import UserError


@dataclass(frozen=True)
class Piece:
    """``rows`` events of one part file, starting at row ``offset``."""

    path: str
    offset: int
    rows: int


@dataclass(frozen=True)
class ShardSpec:
    """One unit of work: its index names its output part; its pieces are what it reads."""

    index: int
    pieces: tuple[Piece, ...]

    @property
    def rows(self) -> int:
        return sum(piece.rows for piece in self.pieces)

    @property
    def part_name(self) -> str:
        return f"part-{self.index:05d}.parquet"


def parquet_row_count(path: Path) -> int:
    """Rows of one part from its footer; a part without a readable footer is named."""
    try:
        return int(pq.ParquetFile(path).metadata.num_rows)
    except (OSError, ValueError) as exc:  # pyarrow raises ArrowInvalid (a ValueError)
        raise UserError(f"events part {path} is not a readable Parquet file: {exc}") from exc


def file_pieces(path: Path, n_rows: int, shard_rows: int) -> list[Piece]:
    """One file cut at fixed offsets, every piece non-empty."""
    return [Piece(str(path), start, min(shard_rows, n_rows - start))
            for start in range(0, n_rows, shard_rows)]


def plan_shards(files: list[Path], shard_rows: int) -> list[ShardSpec]:
    """Shards of at most ``shard_rows`` events over ``files`` (at least one shard, maybe empty).

    A day with no rows still gets one shard reading zero rows of its first file, so every
    run writes a scores part with the output schema.
    """
    if shard_rows < 1:
        raise ValueError(f"shard_rows must be >= 1, got {shard_rows}")
    ordered = sorted(Path(f) for f in files)
    pieces = [piece for path in ordered for piece in file_pieces(path, parquet_row_count(path), shard_rows)]
    if not pieces:
        return [ShardSpec(0, (Piece(str(ordered[0]), 0, 0),) if ordered else ())]
    return _pack(pieces, shard_rows)


def _pack(pieces: list[Piece], shard_rows: int) -> list[ShardSpec]:
    """Greedy packing in order: a shard takes pieces until the next would overflow it."""
    shards: list[list[Piece]] = [[]]
    filled = 0
    for piece in pieces:
        if shards[-1] and filled + piece.rows > shard_rows:
            shards.append([])
            filled = 0
        shards[-1].append(piece)
        filled += piece.rows
    return [ShardSpec(i, tuple(group)) for i, group in enumerate(shards)]
