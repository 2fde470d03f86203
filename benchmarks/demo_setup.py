"""`make demo` on a fresh clone, before vs after the demo installed only what it needs.

Each side is a fresh checkout (``git archive`` of a revision) in a temporary folder with no
``.venv``; ``make demo`` creates the venv, installs, generates, trains, scores and prints.
pip's cache is warm (the first run of the script fills it for both sides), so the figure
is the install and the job, not the download. Sides alternate, one fresh folder per run.

Run: ``.venv/bin/python benchmarks/demo_setup.py --before 76e3fe1 --rounds 2``
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import machine_info  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "demo_setup.md"


def checkout(rev: str, dest: Path) -> Path:
    dest.mkdir(parents=True)
    archive = subprocess.run(["git", "archive", rev], cwd=REPO, capture_output=True, check=True)
    subprocess.run(["tar", "x", "-C", str(dest)], input=archive.stdout, check=True)
    return dest


def timed_demo(rev: str, work: Path) -> float:
    tree = checkout(rev, work)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("UBA_", "VIRTUAL_ENV"))}
    began = time.perf_counter()
    done = subprocess.run(["make", "demo"], cwd=tree, env=env, capture_output=True, text=True, timeout=1800)
    seconds = time.perf_counter() - began
    if done.returncode != 0:
        raise RuntimeError(f"make demo at {rev} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", required=True, help="revision of the former Makefile")
    parser.add_argument("--after", default="HEAD")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    command = "python " + " ".join([str(Path(sys.argv[0]))] + sys.argv[1:])
    info = machine_info()
    times: dict[str, list[float]] = {"before": [], "after": []}
    with tempfile.TemporaryDirectory(prefix="uba-demo-bench-") as tmp:
        timed_demo(args.after, Path(tmp) / "warm")  # fills pip's cache for the shared packages
        for r in range(args.rounds):
            for side, rev in (("before", args.before), ("after", args.after)):
                seconds = timed_demo(rev, Path(tmp) / f"{side}-{r}")
                times[side].append(seconds)
                print(f"round {r + 1} {side}: {seconds:.1f} s", flush=True)
                shutil.rmtree(Path(tmp) / f"{side}-{r}", ignore_errors=True)
    before, after = statistics.median(times["before"]), statistics.median(times["after"])
    lines = [
        "# `make demo` on a fresh clone: before vs after the demo-only install", "",
        f"Recorded {datetime.now(UTC):%Y-%m-%d %H:%M} UTC by `benchmarks/demo_setup.py`.", "",
        "Command:", "", "```", command, "```", "", "## Machine", "",
        *[f"- {k}: {v}" for k, v in info.items()], "",
        "## What is timed", "",
        f"- `make demo` in a fresh `git archive` of `{args.before}` (installs `.[dev]`) and of `{args.after}` "
        "(installs the product only), each from no `.venv`, pip's cache warm, sides alternating.", "",
        "## Results (seconds)", "", "| round | before | after |", "|---:|---:|---:|",
        *[f"| {i + 1} | {b:.1f} | {a:.1f} |" for i, (b, a) in enumerate(zip(times["before"], times["after"],
                                                                            strict=True))],
        "", f"Median: before {before:.1f} s, after {after:.1f} s: **{(1 - after / before):.0%} faster** "
            "(the target is at least 30%).", "",
    ]
    args.out.write_text("\n".join(lines))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
