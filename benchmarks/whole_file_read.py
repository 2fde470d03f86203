"""What the guarded whole-file Parquet read costs, and what it takes on hostile files.

``uba.io.read_parquet_file`` reads every small table whole (flagged, user-day, risk, baseline
snapshots, the analysts' tables, an imported directory): batch by batch, refused once the
batches pass a cap, values checked before Polars takes them. Two figures, each against a
baseline run in the same script:

- **Speed on ordinary files**: tables shaped like the product's own (written by Polars, as
  the product writes them), read by ``read_parquet_file`` and by the plain read it guards
  (``pyarrow.parquet.read_table`` then ``polars.from_arrow``): median of 15 reads each,
  alternating. The frames must be equal. Also timed: the bare batch read (no checks).
- **Peak memory on hostile files** (``tests/hostile/parquet/``): each read in a fresh child,
  by ``read_parquet_file`` and by the plain read: peak RSS (``VmHWM``: ``ru_maxrss`` keeps a
  parent's across exec), wall time and answer of the child. The dictionary bomb is the
  known gap (docs/operations.md): one batch decodes before the cap can refuse it.

    .venv/bin/python benchmarks/whole_file_read.py --work /tmp/uba-whole-read \\
        --output benchmarks/results/whole_file_read.md
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow.parquet as pq
from _machine import machine_info

from uba import io

REPO = Path(__file__).resolve().parent.parent
HOSTILE = REPO / "tests" / "hostile" / "parquet"
BOMBS = ("dictionary_bomb_8mib.parquet", "dictionary_bomb.parquet", "fixed_size_binary_bomb.parquet",
         "flba_8mib_as_decimal_bomb.parquet", "dictionary_copy_per_batch_7kB.parquet")
READS = 15

# The child: one read of one file, by the product's guarded read or pyarrow's plain one.
CHILD = textwrap.dedent("""
    import sys, time
    path, how = sys.argv[1], sys.argv[2]
    began = time.perf_counter()
    try:
        if how == "uba":
            from pathlib import Path
            from uba import io
            io.read_parquet_file(Path(path))
        else:
            import pyarrow.parquet as pq
            pq.read_table(path)
        answer = "read"
    except Exception as exc:
        answer = "refused: " + str(exc).splitlines()[0][:90]
    peak = next(int(line.split()[1]) >> 10 for line in open("/proc/self/status") if line.startswith("VmHWM:"))
    print(peak, time.perf_counter() - began, answer, sep="\\t")
""")


def product_tables(work: Path) -> dict[str, Path]:
    """Files shaped like the product's: a day's flagged events, its risk table and a
    baseline snapshot (numbers and one id per user), and an 18-row risk part."""
    rng = np.random.default_rng(7)
    kinds = ["hour", "device", "download_intensity", "session_length", "actions"]
    n = 46_204
    users = [f"u{i:05d}" for i in rng.integers(0, 20_000, n)]
    flagged = pl.DataFrame({
        "event_id": [f"e{i:09d}" for i in range(n)], "user_id": users,
        "event_type": rng.choice(["login", "view", "click", "download"], n).tolist(),
        "device_type": rng.choice(["desktop", "mobile", "tablet"], n).tolist(),
        "anomaly_score": rng.random(n), "is_anomaly": np.ones(n, bool),
        "reasons": [[f"the {k} is unusual for this user ({rng.random():.2f} above)"] for k in rng.choice(kinds, n)],
        "reason_kinds": [list(rng.choice(kinds, 2, replace=False)) for _ in range(n)],
    })
    risk = pl.DataFrame({
        "user_id": [f"u{i:05d}" for i in range(4_095)], "risk_score": rng.random(4_095) * 100,
        "risk_level": rng.choice(["low", "medium", "high", "critical"], 4_095).tolist(),
        "contributions": [[{"alert_id": f"a{i}-{j}", "type": "event", "points": float(j)} for j in range(3)]
                          for i in range(4_095)],
    })
    baselines = pl.DataFrame({"user_id": [f"u{i:05d}" for i in range(20_000)],
                              **{f"stat_{c}": rng.random(20_000) for c in range(100)}})
    files = {"flagged, 46,204 rows": flagged, "risk, 4,095 users": risk,
             "baseline snapshot, 20,000 users x 101 columns": baselines, "risk part, 18 users": risk.head(18)}
    paths = {}
    for index, (name, frame) in enumerate(files.items()):
        paths[name] = work / f"table-{index}.parquet"
        frame.write_parquet(paths[name])
    return paths


def plain_read(path: Path) -> pl.DataFrame:
    frame = pl.from_arrow(pq.read_table(path))
    assert isinstance(frame, pl.DataFrame)
    return frame


def batch_read(path: Path) -> pl.DataFrame:
    """The guarded read's batches (8,192 rows) without its cap and checks."""
    import pyarrow as pa

    frame = pl.from_arrow(pa.Table.from_batches(list(pq.ParquetFile(path).iter_batches(batch_size=8192))))
    assert isinstance(frame, pl.DataFrame)
    return frame


def time_ms(read: Callable[[Path], pl.DataFrame], path: Path, times: list[float]) -> None:
    began = time.perf_counter()
    read(path)
    times.append((time.perf_counter() - began) * 1000)


def speed(paths: dict[str, Path]) -> list[dict[str, object]]:
    rows = []
    for name, path in paths.items():
        assert io.read_parquet_file(path).equals(plain_read(path)), name
        guarded: list[float] = []
        plain: list[float] = []
        batches: list[float] = []
        for _ in range(READS):
            time_ms(io.read_parquet_file, path, guarded)
            time_ms(plain_read, path, plain)
            time_ms(batch_read, path, batches)
        rows.append({"file": name, "KiB": path.stat().st_size >> 10, "guarded": statistics.median(guarded),
                     "plain": statistics.median(plain), "batches": statistics.median(batches)})
    return rows


def bombs() -> list[dict[str, object]]:
    rows = []
    for name in BOMBS:
        path = HOSTILE / name
        row: dict[str, object] = {"file": name, "bytes": path.stat().st_size}
        for how in ("plain", "uba"):
            done = subprocess.run([sys.executable, "-c", CHILD, str(path), how], capture_output=True,
                                  text=True, timeout=300, cwd=REPO)
            peak, seconds, answer = done.stdout.strip().split("\t")
            row[how] = (int(peak), float(seconds), answer)
        rows.append(row)
    return rows


def render(speeds: list[dict[str, object]], hostile: list[dict[str, object]], command: str) -> str:
    lines = ["# Whole-file Parquet reads: the guarded read against the plain one", "",
             f"Recorded {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} by `{command}`.", "",
             "Machine: " + ", ".join(f"{k} {v}" for k, v in machine_info("polars", "pyarrow").items()), "",
             f"## Speed on files shaped like the product's (median of {READS} reads each, alternating)", "",
             "| file | KiB | `read_parquet_file` ms | plain pyarrow + `from_arrow` ms | ratio | batches of "
             "8,192 rows, no checks ms |",
             "|---|---:|---:|---:|---:|---:|"]
    for row in speeds:
        guarded, plain = float(row["guarded"]), float(row["plain"])  # type: ignore[arg-type]
        lines.append(f"| {row['file']} | {row['KiB']:,} | {guarded:.2f} | {plain:.2f} | {guarded / plain:.2f}x "
                     f"| {float(row['batches']):.2f} |")  # type: ignore[arg-type]
    lines += ["", "## Hostile files (`tests/hostile/parquet/`), each read in a fresh child", "",
              "| file | bytes | plain pyarrow read: peak RSS MiB, s, answer | `read_parquet_file`: peak RSS MiB, s, "
              "answer | peak RSS ratio |", "|---|---:|---|---|---:|"]
    for row in hostile:
        before, after = row["plain"], row["uba"]
        lines.append(f"| {row['file']} | {row['bytes']:,} | {before[0]:,}, {before[1]:.2f}, {before[2]} "  # type: ignore[index]
                     f"| {after[0]:,}, {after[1]:.2f}, {after[2]} | {before[0] / after[0]:.1f}x |")  # type: ignore[index]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/uba-whole-read"))
    parser.add_argument("--output", type=Path, default=None, help="write the Markdown here")
    args = parser.parse_args()
    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    command = "python benchmarks/whole_file_read.py " + " ".join(sys.argv[1:])
    text = render(speed(product_tables(args.work)), bombs(), command)
    print(text)
    if args.output:
        args.output.write_text(text)


if __name__ == "__main__":
    main()
