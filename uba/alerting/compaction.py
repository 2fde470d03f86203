"""Compaction of the analysts' append-only tables (feedback, suppressions, triage).

Every verdict, close and rule is one Parquet part, and every reader lists and opens all
of them: a team giving a few hundred verdicts a day made each verdict (which reads the
whole feedback table under ``runs/.risk-stale.lock``), each score run and each
``GET /alerts`` slower by the day (2.4 s at 3,000 parts, 8 s at 10,000:
benchmarks/results/table_compaction.md). A compaction
merges a table's parts into one, losing nothing and changing no answer:

- the merged part holds every row of the parts it replaces, in their order (its
  ``merge_order`` column keeps which part each row came from, so "later parts, then
  later rows" reads as before), and is named after the newest of them, so parts written
  later still sort after it;
- it names the parts it replaces in its Parquet metadata: from the rename on, readers
  leave those out, so a compaction stopped between its merge and its deletes leaves a
  whole table, and the next one deletes the leftovers;
- it holds the table's compaction lock exclusively, which every append holds shared: no
  part is half-written beside it, and none appears later with an older name;
- readers take no lock: they read a table whole at once and list again when a part they
  listed was merged and deleted meanwhile (``uba.io.scan_table``).
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from uba import io
from uba.alerting.triage import TRIAGE
from uba.logs import get_logger, printable_line

log = get_logger("compaction")

TABLES = (io.FEEDBACK, io.SUPPRESSIONS, TRIAGE)
LOCK_TIMEOUT_SEC = 60.0  # a by-hand compaction waits this long for appends in flight


@dataclass(frozen=True)
class Compaction:
    """What one table's compaction did (``merged`` False: why not, in ``skipped``)."""

    table: str
    parts_before: int
    parts_after: int
    rows: int
    leftovers_removed: int
    skipped: str | None = None

    @property
    def merged(self) -> bool:
        return self.skipped is None and self.parts_before > self.parts_after

    def line(self) -> str:
        """The operator's line about it. The leftovers it removed are said even when it
        merged nothing: after a compaction killed between its rename and its deletes the
        table has one part, and the next one removed them saying only "not compacted"."""
        tidy = f"; removed {self.leftovers_removed} part(s) an earlier compaction had merged" \
            if self.leftovers_removed else ""
        if self.skipped:
            return f"{self.table}: not compacted ({self.skipped}){tidy}"
        return f"{self.table}: {self.parts_before} parts -> {self.parts_after} ({self.rows:,} rows){tidy}"


def compact_table(data_dir: Path, table: str, *, min_parts: int = 2, wait: bool = True) -> Compaction:
    """Merge ``table``'s parts into one when it has at least ``min_parts``.

    ``wait`` False gives up at once when an append holds the table (the nightly job's
    compaction: it comes back the next night); True waits up to ``LOCK_TIMEOUT_SEC``.
    """
    if not os.path.lexists(Path(data_dir) / table):
        return Compaction(table, 0, 0, 0, 0, skipped="never written")
    with io.table_compaction_lock(data_dir, table, LOCK_TIMEOUT_SEC if wait else 0) as held:
        if not held:
            return Compaction(table, 0, 0, 0, 0, skipped="an append held it; try again later")
        removed = _remove_leftovers(data_dir, table)
        parts = io.table_part_files(data_dir, table)
        if len(parts) < max(min_parts, 2):
            return Compaction(table, len(parts), len(parts), 0, removed,
                              skipped=f"{len(parts)} part(s), fewer than {max(min_parts, 2)}")
        rows = _merge(data_dir, table, parts)
        io.fault_point("table_compaction", Path(data_dir) / table)  # merged, not yet deleted (tests)
        io.remove_table_files(Path(data_dir) / table, parts)
        after = len(io.table_part_files(data_dir, table))
    log.debug("compacted %s: %d parts -> %d (%d rows)", table, len(parts), after, rows)
    return Compaction(table, len(parts), after, rows, removed)


def compact_table_apart(data_dir: Path, table: str, *, min_parts: int) -> Compaction:
    """``compact_table`` without waiting for appends, in a process of its own: what score
    and backfill run once their day is published. A Rust abort ends the whole process, past
    any ``except``: one flipped byte in a triage part made Polars' reader ask for 2**61
    bytes, and a run that had published its day exited 134 with a backtrace (found by an
    attack). The parts are decoded by pyarrow now (``io.read_parquet_file``), which raises
    instead; the merge still runs apart, so that a crash anywhere in it is an error naming
    the table's folder, not the run's end. A table holding fewer than ``min_parts`` files
    (leftovers counted) starts no process."""
    folder = Path(data_dir) / table
    files = len(io.listed_table_parts(data_dir, table))
    if files < max(min_parts, 2):
        return Compaction(table, files, files, 0, 0, skipped=f"{files} part(s), fewer than {max(min_parts, 2)}")
    child = subprocess.run([sys.executable, "-m", __name__, str(data_dir), table, str(min_parts)],
                           capture_output=True, text=True, check=False)
    if child.returncode < 0:
        raise RuntimeError(f"the process merging {folder} was killed by {signal.Signals(-child.returncode).name} "
                           "(out of memory, or a part there that crashes the Parquet code?); the table is "
                           "whole, as a compaction stopped anywhere leaves it")
    said = child.stderr.strip().splitlines() or [f"exit status {child.returncode}"]
    if child.returncode != 0:
        raise RuntimeError(said[-1])
    return Compaction(**json.loads(child.stdout.strip().splitlines()[-1]))


def _main(argv: Sequence[str]) -> int:
    """``python -m uba.alerting.compaction DATA_DIR TABLE MIN_PARTS``: ``compact_table_apart``'s
    child; the Compaction as JSON on stdout, or its error as one line on stderr."""
    data_dir, table, min_parts = argv
    try:
        done = compact_table(Path(data_dir), table, min_parts=int(min_parts), wait=False)
    except Exception as exc:  # the parent names it in its warning line
        print(printable_line(str(exc) or type(exc).__name__), file=sys.stderr)
        return 1
    print(json.dumps(dataclasses.asdict(done)))
    return 0


def compact_tables(data_dir: Path, *, min_parts: int = 2, wait: bool = True,
                   tables: Sequence[str] = TABLES) -> list[Compaction]:
    """``compact_table`` for each of ``tables``, in order."""
    return [compact_table(data_dir, table, min_parts=min_parts, wait=wait) for table in tables]


def _remove_leftovers(data_dir: Path, table: str) -> int:
    """Delete the parts a merged part already replaces (a compaction stopped before its
    deletes); returns how many. Also the temporary files of writes that were killed:
    every writer of the table writes its temporary file under the compaction lock, which
    the caller holds exclusively, so none is in flight. A compaction killed before its
    rename left one the size of the table, and each further one another (found by an
    attack)."""
    files = io.listed_table_parts(data_dir, table)
    replaced = io.replaced_table_parts(files)
    gone = [f for f in files if f.name in replaced]
    io.remove_table_files(Path(data_dir) / table, gone)
    io.remove_killed_table_writes(Path(data_dir) / table)
    return len(gone)


def _merge(data_dir: Path, table: str, parts: list[Path]) -> int:
    """Write the merged part of ``parts`` (durable, then renamed into place); returns its rows."""
    frame = io.read_table_parts(parts)
    assert frame is not None  # the caller merges two parts or more
    merged = frame.with_columns(pl.col("_part").rank("dense").cast(pl.Int64).sub(1).alias(io.MERGE_ORDER)) \
        .drop("_part")
    target = Path(data_dir) / table / _merged_name(parts[-1])
    io.write_parquet_atomic(merged, target, metadata={io.MERGED_PARTS_KEY: json.dumps([p.name for p in parts])})
    return merged.height


def _merged_name(newest: Path) -> str:
    """``part-<stamp of the newest merged part>-<hex>-merged.parquet``: it sorts where that
    part did, so every part written after the merge still sorts after it."""
    stamp = newest.name.split("-")[1]
    return f"part-{stamp}-{uuid.uuid4().hex[:8]}{io.MERGED_SUFFIX}.parquet"


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
