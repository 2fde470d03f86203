"""What the analysts' append-only tables cost to read as they grow, and after compaction.

Every verdict is one Parquet part of ``<data-dir>/feedback/``; each verdict, each score
run and each alert listing reads the whole table. Per size, in one process on the same
files: the feedback table is filled with that many parts (one verdict each, the rows
``pending_feedback`` stamps, appended as ``store_feedback`` appends them; not through
``record_feedback``, which reads the whole table before each store, so filling would take
quadratic time), then read the way a verdict and a score run read it
(``io.benign_verdicts``, median of 5), compacted, and read again. The ratio of the two
reads is the figure; the answers must be equal.

    .venv/bin/python benchmarks/table_compaction.py --work /tmp/uba-tables \\
        --output benchmarks/results/table_compaction.md
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import time
from pathlib import Path

from _machine import machine_info

from uba import io
from uba.alerting.compaction import compact_table
from uba.alerting.feedback import pending_feedback

SIZES = (300, 3000, 10000)
READS = 5


def _median_read(data: Path) -> tuple[float, set[str]]:
    times, answer = [], set()
    for _ in range(READS):
        start = time.perf_counter()
        answer = io.benign_verdicts(data)
        times.append(time.perf_counter() - start)
    return statistics.median(times), answer


def measure(work: Path, parts: int) -> dict[str, float]:
    """Fill, read, compact, read again; the seconds of each step."""
    data = work / f"parts-{parts}"
    shutil.rmtree(data, ignore_errors=True)
    for k in range(parts):
        rows = pending_feedback([{"event_id": f"e{k % (parts // 2 + 1)}", "label": "benign" if k % 3 else "malicious"}])
        io.append_table_part(rows.rows, data, io.FEEDBACK)
    before, answer = _median_read(data)
    start = time.perf_counter()
    done = compact_table(data, io.FEEDBACK)
    compaction = time.perf_counter() - start
    after, again = _median_read(data)
    if again != answer or done.parts_after != 1:
        sys.exit(f"{parts} parts: the compacted table answers differently ({len(answer)} vs {len(again)} ids)")
    return {"before": before, "compaction": compaction, "after": after}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    info = machine_info("polars")
    rows = [(n, measure(args.work, n)) for n in SIZES]
    lines = ["# Reading the feedback table as it grows, before and after compaction", "",
             f"Recorded {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} by "
             f"`.venv/bin/python benchmarks/table_compaction.py --work {args.work} --output <file>`.", "",
             "| machine | |", "|---|---|", *[f"| {k} | {v} |" for k, v in info.items()], "",
             "One verdict per part, appended as `store_feedback` appends it; read = `io.benign_verdicts` (what each "
             "verdict reads under `runs/.risk-stale.lock`, and a score run before its commit), median of "
             f"{READS}; answers equal before and after.", "",
             "| parts | read before s | compaction s | read after s | before / after |",
             "|---:|---:|---:|---:|---:|"]
    lines += [f"| {n:,} | {r['before']:.3f} | {r['compaction']:.3f} | {r['after']:.4f} | "
              f"{r['before'] / r['after']:.0f}x |" for n, r in rows]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.output:
        args.output.write_text(text)


if __name__ == "__main__":
    main()
