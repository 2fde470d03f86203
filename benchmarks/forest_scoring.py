"""Compact forest vs scikit-learn: single-row latency and batch throughput.

Why: the API scores one event per request, and ``IsolationForest.score_samples`` pays
a Python call per tree (milliseconds for 200 trees); batch scoring needs throughput.
Both paths are measured the same way, including the StandardScaler step, on a
detector fitted by ``uba.model.fit_detector`` and a scikit-learn pipeline fitted with
the same data and seed (so both score with the very same trees).

Run::

    .venv/bin/python benchmarks/forest_scoring.py --output benchmarks/results/forest_scoring.md
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import _machine  # benchmarks/_machine.py, beside this script
import numpy as np
from sklearn.ensemble import IsolationForest
from sklearn.preprocessing import StandardScaler

from uba.model import fit_detector
from uba.settings import ModelSettings


def machine_info() -> dict[str, str]:
    return _machine.machine_info("numpy", "scikit-learn")


def training_data(rng: np.random.Generator, n_rows: int, n_features: int) -> np.ndarray:
    """Feature-like columns: z-scores, heavy tails, small integers, a binary flag."""
    X = rng.normal(size=(n_rows, n_features))
    X[:, 0] = rng.lognormal(3.0, 1.0, n_rows)
    X[:, 1] = rng.integers(0, 24, n_rows)
    X[:, 2] = rng.integers(0, 2, n_rows)
    return X


def latencies(fn, rows: np.ndarray, calls: int) -> np.ndarray:
    for i in range(min(50, calls)):
        fn(rows[i % len(rows)][None, :])
    out = np.empty(calls)
    for i in range(calls):
        row = rows[i % len(rows)][None, :]
        start = time.perf_counter()
        fn(row)
        out[i] = time.perf_counter() - start
    return out


def timed(fn, X: np.ndarray) -> tuple[float, np.ndarray]:
    start = time.perf_counter()
    result = fn(X)
    return time.perf_counter() - start, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trees", type=int, default=200)
    parser.add_argument("--features", type=int, default=20)
    parser.add_argument("--train-rows", type=int, default=100_000)
    parser.add_argument("--single-calls", type=int, default=5000)
    parser.add_argument("--batch-rows", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, help="write the markdown report here")
    args = parser.parse_args()

    machine = machine_info()
    rng = np.random.default_rng(args.seed)
    X = training_data(rng, args.train_rows, args.features)
    names = [f"f{i}" for i in range(args.features)]
    settings = ModelSettings(n_estimators=args.trees, random_state=args.seed)
    detector, _ = fit_detector(X, names, settings, 98.0)
    scaler = StandardScaler().fit(X)
    forest = IsolationForest(
        n_estimators=args.trees, contamination=settings.contamination, random_state=args.seed
    ).fit(scaler.transform(X))

    def sklearn_scores(rows: np.ndarray) -> np.ndarray:
        return -forest.score_samples(scaler.transform(rows))

    probe = training_data(rng, 10_000, args.features) * rng.choice([1.0, 3.0], size=(10_000, 1))
    compact_lat = latencies(detector.anomaly_scores, probe, args.single_calls)
    sklearn_lat = latencies(sklearn_scores, probe, args.single_calls)

    batch = training_data(rng, args.batch_rows, args.features)
    compact_s, compact_out = timed(detector.anomaly_scores, batch)
    sklearn_s, sklearn_out = timed(sklearn_scores, batch)
    max_diff = float(np.max(np.abs(compact_out - sklearn_out)))

    def pct(a: np.ndarray, q: float) -> float:
        return float(np.percentile(a, q) * 1e6)

    lines = [
        "# Forest scoring: compact numpy forest vs scikit-learn `score_samples`",
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
        "",
        "## Setup",
        "",
        f"- {args.trees} trees, max_samples=auto (psi = {detector.forest.max_samples}), "
        f"{args.features} features, fitted on {args.train_rows:,} rows "
        f"({detector.forest.n_nodes:,} nodes, depth {detector.forest.depth})",
        "- both sides include the StandardScaler step; scikit-learn runs with its defaults "
        "(sequential joblib backend), the compact forest is plain numpy, one thread",
        f"- single row: {args.single_calls:,} calls each, one row per call, cycling through "
        "10,000 probe rows",
        f"- batch: {args.batch_rows:,} rows in one call each",
        "",
        "## Results",
        "",
        "| measure | compact forest | scikit-learn | ratio (compact vs scikit-learn) |",
        "|---|---|---|---|",
        f"| single row p50 (µs) | {pct(compact_lat, 50):.1f} | {pct(sklearn_lat, 50):.1f} "
        f"| {np.percentile(sklearn_lat, 50) / np.percentile(compact_lat, 50):.0f}x faster |",
        f"| single row p99 (µs) | {pct(compact_lat, 99):.1f} | {pct(sklearn_lat, 99):.1f} "
        f"| {np.percentile(sklearn_lat, 99) / np.percentile(compact_lat, 99):.0f}x faster |",
        f"| batch {args.batch_rows:,} rows (s) | {compact_s:.2f} | {sklearn_s:.2f} | |",
        f"| batch throughput (rows/s) | {args.batch_rows / compact_s:,.0f} "
        f"| {args.batch_rows / sklearn_s:,.0f} | {sklearn_s / compact_s:.2f}x the throughput |",
        "",
        f"Largest absolute score difference over the {args.batch_rows:,} batch rows: {max_diff:.3g}.",
        "",
        "Reading: one row costs scikit-learn one Python-level tree walk per tree; the compact",
        "forest walks all trees together with a handful of numpy calls per tree level, so",
        "the API's per-event scoring drops from milliseconds to tens of microseconds. For",
        "big batches both are bound by the same per-node work and run at about the same",
        "rate (scikit-learn's Cython walk vs numpy gathers over a rows x trees matrix).",
        "The machine is shared with other jobs, so single runs vary by some 10-20%.",
        "",
    ]
    report = "\n".join(lines)
    print(report)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(report)


if __name__ == "__main__":
    main()
