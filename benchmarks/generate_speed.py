"""Synthetic data generation speed: the pure generator and the full `uba-batch generate`.

Why: the generator must scale (``--users 50000 --days 1`` in seconds, not minutes), so
it is vectorised over sessions and events. This records how fast it really is, for the
default size and the large ones, with and without the writing (validation + Parquet
partitions through the ingest writer + labels).

The machine is shared, so every pure-generator size is run several times and the best
run is reported next to the median, together with the load average.

Run::

    .venv/bin/python benchmarks/generate_speed.py --output benchmarks/results/generate_speed.md
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, date, datetime
from pathlib import Path

import _machine  # benchmarks/_machine.py, beside this script

from uba.generate import GenerationOptions, generate_dataset

START = date(2026, 3, 2)
PURE_SIZES = ((500, 21, 5), (50_000, 1, 3), (50_000, 7, 2))  # users, days, repeats
COMMAND_SIZES = ((500, 21), (50_000, 1), (50_000, 7))
UBA = Path(sys.executable).with_name("uba-batch")


def machine_info() -> dict[str, str]:
    return _machine.machine_info("numpy", "polars", "uba")


def time_pure(users: int, days: int, repeats: int) -> dict[str, float]:
    """Best and median wall time of ``generate_dataset`` (events + labels + users frames)."""
    seconds, events = [], 0
    for _ in range(repeats):
        started = time.perf_counter()
        data = generate_dataset(GenerationOptions(users=users, days=days, start=START))
        seconds.append(time.perf_counter() - started)
        events = data.events.height
    return {"events": events, "best": min(seconds), "median": statistics.median(seconds)}


def time_command(users: int, days: int, root: Path) -> dict[str, float | str]:
    """Wall time of the real command in a fresh process, writing to a fresh directory."""
    out = root / f"data-{users}x{days}"
    args = [str(UBA), "--log-level", "WARNING", "generate", "--out", str(out), "--users", str(users),
            "--days", str(days), "--start", START.isoformat()]
    started = time.perf_counter()
    done = subprocess.run(args, capture_output=True, text=True, check=True)
    seconds = time.perf_counter() - started
    first = done.stdout.splitlines()[0]
    events = int(first.split()[1].replace(",", ""))
    size = sum(p.stat().st_size for p in out.rglob("*.parquet"))
    return {"events": events, "seconds": seconds, "bytes": size,
            "command": shlex.join(["uba-batch", *args[1:]]).replace(str(root), "$TMP")}


def render(pure: list[tuple[int, int, dict[str, float]]], command: list[tuple[int, int, dict[str, float | str]]],
           info: dict[str, str], argv: list[str]) -> str:
    lines = [
        "# Synthetic data generation speed",
        "",
        f"Run {datetime.now(UTC):%Y-%m-%d %H:%M} UTC.",
        "",
        "Command:",
        "",
        "```",
        shlex.join([".venv/bin/python", "benchmarks/generate_speed.py", *argv]),
        "```",
        "",
        "## Machine",
        "",
        *(f"- {k}: {v}" for k, v in info.items()),
        "",
        "The machine is shared with other jobs (see the load average); the pure generator is",
        "timed several times and the best and median runs are shown.",
        "",
        "## Pure generator (`uba.generate.generate_dataset`, events + labels + users in memory)",
        "",
        "| users x days | events | best s | median s | events/s (best) |",
        "|---|---:|---:|---:|---:|",
    ]
    for users, days, r in pure:
        lines.append(f"| {users:,} x {days} | {int(r['events']):,} | {r['best']:.2f} | {r['median']:.2f} "
                     f"| {r['events'] / r['best']:,.0f} |")
    lines += [
        "",
        "## Full command (`uba-batch generate`: generate + validate + write partitions and labels)",
        "",
        "One run each, new process (includes interpreter and import start-up), fresh directory.",
        "",
        "| users x days | events | wall s | events/s | Parquet on disk | command |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for users, days, r in command:
        lines.append(f"| {users:,} x {days} | {int(r['events']):,} | {float(r['seconds']):.2f} "
                     f"| {int(r['events']) / float(r['seconds']):,.0f} | {int(r['bytes']) / 1e6:.1f} MB "
                     f"| `{r['command']}` |")
    lines += [
        "",
        "Note: the personas are calibrated so the default 500 users x 21 days gives about",
        "70,000 events (about 6.7 events per user-day), so 50,000 users x 1 day gives about",
        "0.4 million events on a weekday; the 50,000 x 7 row shows a multi-million-event run.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=None, help="Markdown file to write (default: print).")
    parser.add_argument("--skip-command", action="store_true", help="Time only the pure generator.")
    args = parser.parse_args(argv)
    info = machine_info()
    pure = [(u, d, time_pure(u, d, r)) for u, d, r in PURE_SIZES]
    command = []
    if not args.skip_command:
        with tempfile.TemporaryDirectory(prefix="uba-genbench-") as tmp:
            command = [(u, d, time_command(u, d, Path(tmp))) for u, d in COMMAND_SIZES]
    text = render(pure, command, info, sys.argv[1:] if argv is None else argv)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
