"""Forest scoring on one core: compiled kernel vs the numpy path vs scikit-learn.

Why: batch scoring needs rows per second per core (Ray shards add cores), and the API
scores one event per request. Three ways to score the very same trees are measured in
the same run, each including the StandardScaler step:

* kernel: ``Detector.anomaly_scores`` (``uba.model.kernel``, numba), the product's path:
  a batch looks for rows that repeat (twins) and walks each distinct row once;
* kernel, every row walked: the same without the search for twins (what the first
  bullet costs when there are none, and saves when there are);
* numpy: the same compact forest walked with numpy gathers (``compiled=False``), the
  previous default;
* scikit-learn: ``-IsolationForest.score_samples`` of a forest fitted with the same
  data and seed (so with the same trees).

The process is pinned to one CPU. Batch rounds rotate the order of the three and the
ratio is taken within each round (the machine may be shared: the medians and the load
average are reported). The first-score cost of a fresh process, with an empty and with a
filled numba cache, is measured in subprocesses.

Batches are measured twice: rows that are all distinct (the worst case for the search
for twins), and rows of which --twin-share are repeats of other rows of the batch, as
on a generated day (44%: the events of one type in one hour of a session share every
feature).

Run::

    .venv/bin/python benchmarks/forest_scoring.py --output benchmarks/results/forest_scoring.md
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import _machine  # benchmarks/_machine.py, beside this script
import numpy as np
from sklearn.ensemble import IsolationForest
from sklearn.preprocessing import StandardScaler

import uba.model.forest
from uba.features.events import FEATURE_COLUMNS
from uba.model.forest import Detector, fit_detector
from uba.settings import ModelSettings

Scorer = Callable[[np.ndarray], np.ndarray]
WALKED = "kernel, every row walked"

READING = [
    "## Reading",
    "",
    "The kernel walks each tree re-laid as a complete binary tree (a branch-free step per",
    "level), trees outer and a block of rows inner, so one tree's tables and the rows stay",
    "in L1 (each block copied feature-major, so the rows walked together share one base",
    "address), and 8 rows side by side so the CPU overlaps their chains of dependent loads;",
    "scikit-learn and the numpy path walk node arrays. For one row the kernel walks 8",
    "trees side by side (a few µs); most of the rest is numpy overhead in scaling and the",
    "score formula. The machine is shared: absolute rates move with the load (the kernel's",
    "more than scikit-learn's, as it uses the core's full width); compare the same-round",
    "ratios.",
    "",
]

# A fresh process: import, build a forest like a bundle load does, then time the first score.
_FIRST_SCORE = """
import time, numpy as np
from sklearn.ensemble import IsolationForest
from uba.model.forest import compact_forest_from_sklearn
forest = compact_forest_from_sklearn(IsolationForest(n_estimators=20, random_state=0).fit(np.eye(20)), 20)
start = time.perf_counter()
forest.scores(np.zeros((1, 20), np.float32))
print(time.perf_counter() - start)
"""


def every_row_walked(detector: Detector) -> Scorer:
    """The detector's scores with the search for twins switched off (a batch under the
    forest's minimum for it is walked row by row)."""

    def scores(rows: np.ndarray) -> np.ndarray:
        kept = uba.model.forest._DISTINCT_MIN_ROWS
        uba.model.forest._DISTINCT_MIN_ROWS = len(rows) + 1
        try:
            return detector.anomaly_scores(rows)
        finally:
            uba.model.forest._DISTINCT_MIN_ROWS = kept

    return scores


def with_twins(rng: np.random.Generator, batch: np.ndarray, twin_share: float) -> np.ndarray:
    """``batch``'s size, of which ``twin_share`` rows repeat others drawn from its first
    ``(1 - twin_share)`` rows, in a random order."""
    distinct = max(1, round(len(batch) * (1.0 - twin_share)))
    picks = np.concatenate([np.arange(distinct), rng.integers(0, distinct, len(batch) - distinct)])
    return batch[rng.permutation(picks)]


def training_data(rng: np.random.Generator, n_rows: int, n_features: int) -> np.ndarray:
    """Feature-like columns: z-scores, heavy tails, small integers, a binary flag."""
    X = rng.normal(size=(n_rows, n_features))
    X[:, 0] = rng.lognormal(3.0, 1.0, n_rows)
    X[:, 1] = rng.integers(0, 24, n_rows)
    X[:, 2] = rng.integers(0, 2, n_rows)
    return X


def latencies(fn: Scorer, rows: np.ndarray, calls: int) -> np.ndarray:
    for i in range(min(50, calls)):
        fn(rows[i % len(rows)][None, :])
    out = np.empty(calls)
    for i in range(calls):
        row = rows[i % len(rows)][None, :]
        start = time.perf_counter()
        fn(row)
        out[i] = time.perf_counter() - start
    return out


def batch_rounds(scorers: dict[str, Scorer], X: np.ndarray, rounds: int) -> dict[str, np.ndarray]:
    """Rows/s of each scorer per round; the order rotates so no one always runs first."""
    names = list(scorers)
    rates = {name: np.empty(rounds) for name in names}
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            start = time.perf_counter()
            scorers[name](X)
            rates[name][r] = len(X) / (time.perf_counter() - start)
    return rates


def first_score_seconds(cache_dir: str, runs: int) -> np.ndarray:
    """First-score time of fresh processes using ``cache_dir`` as numba's cache."""
    env = {**os.environ, "NUMBA_CACHE_DIR": cache_dir}
    out = []
    for _ in range(runs):
        done = subprocess.run(
            [sys.executable, "-c", _FIRST_SCORE], env=env, capture_output=True, text=True, check=True
        )
        out.append(float(done.stdout.strip()))
    return np.array(out)


def cold_and_warm_start(runs: int) -> tuple[np.ndarray, np.ndarray]:
    """(empty cache, filled cache) first-score seconds, a new empty cache for each cold run."""
    cold = []
    for _ in range(runs):
        with tempfile.TemporaryDirectory() as empty:
            cold.append(first_score_seconds(empty, 1)[0])
    with tempfile.TemporaryDirectory() as filled:
        first_score_seconds(filled, 1)
        warm = first_score_seconds(filled, runs)
    return np.array(cold), warm


def fit_both(args: argparse.Namespace) -> tuple[Detector, Scorer, np.random.Generator]:
    rng = np.random.default_rng(args.seed)
    X = training_data(rng, args.train_rows, args.features)
    settings = ModelSettings(n_estimators=args.trees, random_state=args.seed)
    detector, _ = fit_detector(X, [f"f{i}" for i in range(args.features)], settings, 98.0)
    scaler = StandardScaler().fit(X)
    forest = IsolationForest(
        n_estimators=args.trees, contamination=settings.contamination, random_state=args.seed
    ).fit(scaler.transform(X))

    def sklearn_scores(rows: np.ndarray) -> np.ndarray:
        return -forest.score_samples(scaler.transform(rows))

    return detector, sklearn_scores, rng


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trees", type=int, default=200)
    parser.add_argument("--features", type=int, default=len(FEATURE_COLUMNS))
    parser.add_argument("--train-rows", type=int, default=100_000)
    parser.add_argument("--single-calls", type=int, default=5000)
    parser.add_argument("--batch-rows", type=int, default=200_000)
    parser.add_argument("--twin-share", type=float, default=0.44,
                        help="share of the second batch's rows that repeat another row")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--start-runs", type=int, default=3, help="fresh processes per cache state")
    parser.add_argument("--cpu", type=int, default=0, help="the one CPU everything runs on")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, help="write the markdown report here")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    machine = _machine.machine_info("numpy", "scikit-learn", "numba")  # before pinning: nproc
    os.sched_setaffinity(0, {args.cpu})  # one core; subprocesses inherit it
    detector, sklearn_scores, rng = fit_both(args)

    def numpy_scores(rows: np.ndarray) -> np.ndarray:
        return detector.forest.scores(detector.scale(rows), compiled=False)

    scorers: dict[str, Scorer] = {
        "kernel": detector.anomaly_scores,
        WALKED: every_row_walked(detector),
        "numpy": numpy_scores,
        "scikit-learn": sklearn_scores,
    }
    cold, warm = cold_and_warm_start(args.start_runs)

    probe = training_data(rng, 10_000, args.features) * rng.choice([1.0, 3.0], size=(10_000, 1))
    latency = {name: latencies(fn, probe, args.single_calls) for name, fn in scorers.items() if name != WALKED}

    batch = training_data(rng, args.batch_rows, args.features)
    rates = batch_rounds(scorers, batch, args.rounds)
    twinned = with_twins(rng, batch, args.twin_share)
    twin_rates = batch_rounds({name: scorers[name] for name in ("kernel", WALKED, "scikit-learn")},
                              twinned, args.rounds)
    max_diff = {}
    for rows in (batch, twinned):
        reference = sklearn_scores(rows)
        for name in ("kernel", WALKED, "numpy"):
            max_diff[name] = max(max_diff.get(name, 0.0), float(np.max(np.abs(scorers[name](rows) - reference))))
    load_end = " ".join(f"{v:.2f}" for v in os.getloadavg())

    report = render(args, machine, detector, latency, (rates, twin_rates), max_diff, cold, warm, load_end)
    print(report)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(report)


def render(
    args: argparse.Namespace,
    machine: dict[str, str],
    detector: Detector,
    latency: dict[str, np.ndarray],
    batches: tuple[dict[str, np.ndarray], dict[str, np.ndarray]],
    max_diff: dict[str, float],
    cold: np.ndarray,
    warm: np.ndarray,
    load_end: str,
) -> str:
    forest = detector.forest
    sk_lat = np.median(latency["scikit-learn"])

    def rate_row(name: str, batch: int = 0) -> str:
        rates = batches[batch]
        ratio = np.median(rates[name] / rates["scikit-learn"])
        low, high = np.min(rates[name]), np.max(rates[name])
        return (
            f"| {name} | {np.median(rates[name]):,.0f} | {low:,.0f} - {high:,.0f} "
            f"| {ratio:.2f}x |"
        )

    def latency_row(name: str) -> str:
        p50, p99 = (np.percentile(latency[name], q) * 1e6 for q in (50, 99))
        return f"| {name} | {p50:.1f} | {p99:.1f} | {sk_lat / np.median(latency[name]):.0f}x |"

    lines = [
        "# Forest scoring on one core: compiled kernel vs numpy path vs scikit-learn",
        "",
        f"Run {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}.",
        "",
        "Command:",
        "",
        "```",
        " ".join(shlex.quote(a) for a in [".venv/bin/python", *sys.argv]),
        "```",
        "",
        "## Machine",
        "",
        *[f"- {key}: {value}" for key, value in machine.items()],
        f"- load average at end: {load_end}",
        f"- pinned to CPU {args.cpu} (`os.sched_setaffinity`); the kernel is single-threaded",
        "",
        "## Setup",
        "",
        f"- {args.trees} trees, max_samples=auto (psi = {forest.max_samples}), "
        f"{args.features} features (the product's FEATURE_COLUMNS), fitted on "
        f"{args.train_rows:,} rows ({forest.n_nodes:,} nodes, depth {forest.depth}, "
        f"{'complete-tree' if forest.complete_layout else 'node-array'} kernel layout)",
        "- every scorer includes the StandardScaler step; scikit-learn runs with its defaults",
        f"- single row: {args.single_calls:,} calls each, one row per call, cycling through "
        "10,000 probe rows",
        f"- batch: {args.batch_rows:,} rows per call, {args.rounds} rounds, order rotated each "
        "round; ratio = median over rounds of (rows/s / scikit-learn's rows/s in that round)",
        "",
        "## Batch throughput (one core)",
        "",
        "| scorer | rows/s (median) | min - max over rounds | vs scikit-learn |",
        "|---|---|---|---|",
        rate_row("kernel"),
        rate_row(WALKED),
        rate_row("numpy"),
        rate_row("scikit-learn"),
        "",
        f"The same, {args.batch_rows:,} rows of which {args.twin_share:.0%} repeat another row of the batch:",
        "",
        "| scorer | rows/s (median) | min - max over rounds | vs scikit-learn |",
        "|---|---|---|---|",
        rate_row("kernel", 1),
        rate_row(WALKED, 1),
        rate_row("scikit-learn", 1),
        "",
        f"Largest absolute score difference from scikit-learn over both batches: "
        f"kernel {max_diff['kernel']:.3g}, {WALKED} {max_diff[WALKED]:.3g}, numpy {max_diff['numpy']:.3g}.",
        "",
        "## Single row (the API's call)",
        "",
        "| scorer | p50 (µs) | p99 (µs) | p50 vs scikit-learn |",
        "|---|---|---|---|",
        latency_row("kernel"),
        latency_row("numpy"),
        latency_row("scikit-learn"),
        "",
        "## First score in a fresh process",
        "",
        "Time of the first `scores()` call after building a forest (numba import, then",
        "compiling the kernel or loading it from numba's cache), "
        f"median of {len(cold)} fresh processes:",
        "",
        f"- empty cache (compiles and fills it): {np.median(cold):.2f} s "
        f"(min {np.min(cold):.2f}, max {np.max(cold):.2f})",
        f"- filled cache (loads): {np.median(warm):.2f} s "
        f"(min {np.min(warm):.2f}, max {np.max(warm):.2f})",
        "",
        *READING,
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
