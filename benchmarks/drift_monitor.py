"""Drift monitor verdicts on clean and shifted generated days, through the real CLI.

The drift monitoring scenario: ``uba-batch generate --users 300 --days 36 --start 2026-03-01``,
``train`` on the first 21 days, ``backfill`` the rest, then count each day's verdict
from the run manifests. Clean worlds (no drift injected) should give at most one
``warn`` in all and no ``drift``; a planted session-length shift and a device-mix
shift should be called ``drift``.

    .venv/bin/python benchmarks/drift_monitor.py --work /tmp/uba-drift \\
        --output benchmarks/results/drift_monitor.md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
from collections import Counter
from datetime import date, timedelta
from pathlib import Path

START = date(2026, 3, 1)
DAYS = 36
TRAIN_DAYS = 21
SHIFT_FROM = date(2026, 3, 25)
SCENARIOS = (
    ("clean, seed 21", 21, []),
    ("clean, seed 22", 22, []),
    ("sessions 3x longer from 2026-03-25, seed 21", 21, ["--shift-from", SHIFT_FROM.isoformat()]),
    ("half the desktop sessions on mobile from 2026-03-25, seed 21", 21,
     ["--device-shift-from", SHIFT_FROM.isoformat(), "--mobile-shift", "0.5"]),
)


def _cli(*args: str, cwd: Path) -> None:
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    subprocess.run([str(Path(sys.executable).parent / "uba-batch"), *args], cwd=cwd, env=env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def run_scenario(work: Path, seed: int, extra: list[str]) -> list[dict]:
    """Generate, train, backfill; one verdict row per scored day."""
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    train_end = START + timedelta(days=TRAIN_DAYS - 1)
    last = START + timedelta(days=DAYS - 1)
    _cli("generate", "--out", "data", "--users", "300", "--days", str(DAYS), "--start", START.isoformat(),
         "--seed", str(seed), *extra, cwd=work)
    _cli("train", "--data-dir", "data", "--end-date", train_end.isoformat(), "--window-days", str(TRAIN_DAYS),
         "--model-dir", "models", cwd=work)
    _cli("backfill", "--start", (train_end + timedelta(days=1)).isoformat(), "--end", last.isoformat(),
         "--data-dir", "data", "--model-dir", "models", "--output-dir", "output", cwd=work)
    rows = []
    for manifest in sorted((work / "output" / "runs").glob("event_date=*/manifest.json")):
        drift = json.loads(manifest.read_text())["drift"]
        rows.append({"date": manifest.parent.name.split("=")[1], "status": drift["status"],
                     "score_psi": drift.get("score_psi"), "score_excess": drift.get("score_psi_excess"),
                     "feature": drift.get("max_feature"), "feature_excess": drift.get("max_feature_psi_excess"),
                     "note": "; ".join(drift.get("why") or drift.get("warnings") or [])})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/uba-drift"))
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()
    lines = ["# Drift monitor verdicts on clean and shifted generated days", "",
             f"Command: `.venv/bin/python benchmarks/drift_monitor.py --work {args.work}"
             + (f" --output {args.output}`" if args.output else "`"), "",
             f"Machine: {platform.machine()}, {os.cpu_count()} cores, python {platform.python_version()}. "
             f"Each world: 300 users, {DAYS} days from {START}, trained on the first {TRAIN_DAYS} days, "
             "the rest scored by `backfill` (default settings).", "",
             "| world | days | ok | warn | drift |", "|---|---:|---:|---:|---:|"]
    details = []
    for index, (name, seed, extra) in enumerate(SCENARIOS):
        rows = run_scenario(args.work / f"world{index}", seed, extra)
        shifted = [r for r in rows if extra and r["date"] >= SHIFT_FROM.isoformat()]
        judged = shifted if extra else rows
        counts = Counter(r["status"] for r in judged)
        label = f"{name} (days from the shift)" if extra else name
        lines.append(f"| {label} | {len(judged)} | {counts['ok']} | {counts['warn']} | {counts['drift']} |")
        details += ["", f"## {name}", "", "| date | status | score PSI | excess | top feature | excess | note |",
                    "|---|---|---:|---:|---|---:|---|"]
        details += [f"| {r['date']} | {r['status']} | {r['score_psi']} | {r['score_excess']} | {r['feature']} | "
                    f"{r['feature_excess']} | {r['note']} |" for r in rows]
        print(label, dict(counts), flush=True)
    text = "\n".join(lines + details) + "\n"
    if args.output:
        args.output.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
