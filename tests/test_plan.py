"""Shard planning from Parquet footers: every row in exactly one shard, fixed offsets,
small files packed together, and a plan that depends on the data and one setting only."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from uba.errors import UserError
from uba.scoring.plan import Piece, plan_shards


def _part(folder: Path, name: str, rows: int) -> Path:
    path = folder / name
    pl.DataFrame({"event_id": [f"{name}-{i}" for i in range(rows)]}).write_parquet(path)
    return path


def _covered(specs) -> list[tuple[str, int]]:
    return [(Path(p.path).name, row) for s in specs for p in s.pieces for row in range(p.offset, p.offset + p.rows)]


def test_every_row_is_in_exactly_one_shard_of_at_most_shard_rows(tmp_path: Path) -> None:
    files = [_part(tmp_path, "part-b.parquet", 25), _part(tmp_path, "part-a.parquet", 7),
             _part(tmp_path, "part-c.parquet", 3)]
    specs = plan_shards(files, 10)
    expected = [(n, r) for n, rows in (("part-a.parquet", 7), ("part-b.parquet", 25), ("part-c.parquet", 3))
                for r in range(rows)]
    assert _covered(specs) == expected
    assert [s.index for s in specs] == list(range(len(specs)))
    assert all(0 < s.rows <= 10 for s in specs)
    # fixed offsets within a file, small pieces packed in order: a(7) | b[0:10] | b[10:20] | b[20:25]+c(3)
    assert [[(Path(p.path).name, p.offset, p.rows) for p in s.pieces] for s in specs] == [
        [("part-a.parquet", 0, 7)],
        [("part-b.parquet", 0, 10)],
        [("part-b.parquet", 10, 10)],
        [("part-b.parquet", 20, 5), ("part-c.parquet", 0, 3)],
    ]
    assert [s.part_name for s in specs] == [f"part-{i:05d}.parquet" for i in range(4)]


def test_the_plan_does_not_depend_on_the_order_files_are_listed(tmp_path: Path) -> None:
    files = [_part(tmp_path, f"part-{i}.parquet", 4 + i) for i in range(5)]
    assert plan_shards(files, 6) == plan_shards(list(reversed(files)), 6)


def test_an_empty_day_still_gets_one_shard_for_the_output_schema(tmp_path: Path) -> None:
    empty = _part(tmp_path, "part-0.parquet", 0)
    specs = plan_shards([empty], 100)
    assert len(specs) == 1 and specs[0].rows == 0 and specs[0].pieces == (Piece(str(empty), 0, 0),)


def test_a_part_without_a_readable_footer_is_named(tmp_path: Path) -> None:
    good = _part(tmp_path, "part-0.parquet", 3)
    bad = tmp_path / "part-1.parquet"
    bad.write_bytes(good.read_bytes()[:-20])
    with pytest.raises(UserError, match="part-1.parquet is not a readable Parquet file"):
        plan_shards([good, bad], 10)


def test_shard_rows_must_be_positive(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="shard_rows"):
        plan_shards([_part(tmp_path, "p.parquet", 1)], 0)
