"""User-level detection of multi-day campaigns, through the real CLI (issue 14's targets).

Per world: ``generate --users 500 --days 28 --campaigns N --campaigns-from <day 22>``,
``train`` on the first 21 days, ``backfill`` the last 7 (every run publishes risk/),
``evaluate`` over those 7 days; the user-level section of ``evaluation.json`` compares
users ranked by entity risk with users ranked by their maximum event score. Two seeds
with different persona mixes, as the issue asks.

    .venv/bin/python benchmarks/user_level.py --work /tmp/uba-user-level \\
        --output benchmarks/results/user_level.md
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from datetime import date, timedelta
from pathlib import Path

from _machine import machine_info

START = date(2026, 3, 1)
DAYS = 28
TRAIN_DAYS = 21
WORLDS = (
    ("seed 31, default persona mix", 31, []),
    ("seed 32, night-heavy mix", 32, ["--persona-mix", "office=0.3,night=0.3,apac=0.1,power=0.1,light=0.2"]),
)


def _cli(*args: str, cwd: Path) -> str:
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    done = subprocess.run([str(Path(sys.executable).parent / "uba-batch"), *args], cwd=cwd, env=env,
                          check=True, capture_output=True, text=True)
    return done.stdout


def run_world(work: Path, seed: int, extra: list[str], campaigns: int) -> dict:
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    train_end = START + timedelta(days=TRAIN_DAYS - 1)
    first, last = train_end + timedelta(days=1), START + timedelta(days=DAYS - 1)
    began = time.perf_counter()
    _cli("generate", "--out", "data", "--users", "500", "--days", str(DAYS), "--start", START.isoformat(),
         "--seed", str(seed), "--campaigns", str(campaigns), "--campaigns-from", first.isoformat(), *extra,
         cwd=work)
    _cli("train", "--data-dir", "data", "--end-date", train_end.isoformat(), "--window-days", str(TRAIN_DAYS),
         "--model-dir", "models", cwd=work)
    _cli("backfill", "--start", first.isoformat(), "--end", last.isoformat(), "--data-dir", "data",
         "--model-dir", "models", "--output-dir", "output", cwd=work)
    summary = _cli("evaluate", "--data-dir", "data", "--model-dir", "models", "--output-dir", "output",
                   "--start", first.isoformat(), "--end", last.isoformat(), cwd=work)
    report = json.loads((work / "output" / "evaluation" / "evaluation.json").read_text())
    return {"report": report, "summary": summary, "seconds": time.perf_counter() - began}


def _fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def write(path: Path, results: list[tuple[str, dict]], command: str, campaigns: int) -> None:
    info = machine_info("polars", "numpy", "scikit-learn")
    lines = [
        "# User-level detection of multi-day campaigns (issue 14)", "",
        f"Recorded {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} by `benchmarks/user_level.py`.", "",
        "Command:", "", "```", command, "```", "", "## Machine", "",
        *[f"- {k}: {v}" for k, v in info.items()], "",
        "## Setup", "",
        f"- `generate --users 500 --days {DAYS} --campaigns {campaigns} --campaigns-from <day {TRAIN_DAYS + 1}>`, "
        f"`train` on the first {TRAIN_DAYS} days, `backfill` the last {DAYS - TRAIN_DAYS} (default settings, "
        "embedded Ray), `evaluate` over them.",
        "- precision@k (= recall@k, k = users with an active campaign that day) averaged over the days with at "
        "least one active campaign; time to high from each campaign's start, within the campaign.", "",
        "## Results", "",
        "| world | ranking | precision@k | days | median days to high | reached | AP (user-days) |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for name, result in results:
        user = result["report"]["user_level"]
        if "skipped" in user:
            lines.append(f"| {name} | skipped: {user['skipped']} | | | | | |")
            continue
        for ranking, r in user["rankings"].items():
            p, t, c = r["precision_at_k"], r["time_to_high"], r["pr_curve"]
            lines.append(f"| {name} | {ranking} | {_fmt(p['mean_precision_at_k'])} | {p['days_with_campaigns']} | "
                         f"{_fmt(t['median_days'], 1)} | {t['reached']}/{t['total']} | "
                         f"{_fmt(c['average_precision'])} |")
    lines += ["", "## Issue 14's user-level targets", "",
              "| world | precision@k >= 0.8 | median time to high <= 2 days | risk beats max score by >= 0.2 |",
              "|---|---|---|---|"]
    for name, result in results:
        user = result["report"]["user_level"]
        if "skipped" in user:
            continue
        risk = user["rankings"]["risk_score"]
        p = risk["precision_at_k"]["mean_precision_at_k"] or 0.0
        median = risk["time_to_high"]["median_days"]
        gain = user["precision_at_k_gain"] or 0.0
        lines.append(f"| {name} | {p:.3f} {'met' if p >= 0.8 else 'missed'} | "
                     f"{_fmt(median, 1)} {'met' if median is not None and median <= 2 else 'missed'} | "
                     f"{gain:+.3f} {'met' if gain >= 0.2 else 'missed'} |")
    lines += ["", "## Event-level figures of the same runs (`evaluate`)", ""]
    for name, result in results:
        lines += [f"### {name} ({result['seconds']:.0f} s end to end)", "", "```", result["summary"].strip(),
                  "```", ""]
    path.write_text("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/uba-user-level"))
    parser.add_argument("--campaigns", type=int, default=12)
    parser.add_argument("--output", type=Path, default=Path(__file__).parent / "results" / "user_level.md")
    args = parser.parse_args()
    command = "python " + " ".join([str(Path(sys.argv[0]))] + sys.argv[1:])
    results = []
    for i, (name, seed, extra) in enumerate(WORLDS):
        result = run_world(args.work / f"world{i}", seed, extra, args.campaigns)
        print(name, json.dumps({k: v.get("precision_at_k", {}).get("mean_precision_at_k")
                                for k, v in result["report"]["user_level"].get("rankings", {}).items()}),
              flush=True)
        results.append((name, result))
    write(args.output, results, command, args.campaigns)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
