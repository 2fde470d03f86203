"""End-to-end `uba-batch score --date` throughput and peak memory on a large day, next to
a straightforward single-process pandas + scikit-learn implementation of the same
event features.

What it does (work files under --work, default <tmp>/uba-score-throughput, outside the
repository; about 150 MB, removed at the end unless --keep):

1. `uba-batch generate` --users users x (--history-days + 1) days; the last day is D.
2. Day D is enlarged to ~--day-events events (D's own events repeated with new event
   ids) and stored through the real ingest writer, so D is one large day while the
   history keeps its normal density.
3. `uba-batch train` on the 21 days before D.
4. A scikit-learn StandardScaler + IsolationForest with the same settings is fitted for
   the reference on a sample of the same training features (not timed).
5. Timed, each in its own process, peak memory sampled over the whole process tree:
   `uba-batch score --date D` (embedded local Ray, the default) and `--in-process`,
   then the reference (`--reference-run`): pandas reads D's events and the baseline
   table as of D, computes the event features with pandas/numpy, scales and scores with
   scikit-learn, thresholds, writes a Parquet of scores.
6. The reference's features are checked against the product's `event_features` on a
   sample of D's events (largest absolute difference per column), so the comparison is
   of the same features, and the results are written as Markdown.

Run from the repository root, e.g.
    .venv/bin/python benchmarks/score_throughput.py --output benchmarks/results/score_throughput.md
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
UBA = BIN / "uba-batch"
TRAIN_WINDOW_DAYS = 21
RAY_LABEL = "uba score (embedded Ray, default)"
IN_PROCESS_LABEL = "uba score --in-process"
REFERENCE_LABEL = "pandas + scikit-learn reference"
REFERENCE_TRAIN_ROWS = 300_000
FEATURE_CHECK_ROWS = 200_000


# --- measuring a process tree ------------------------------------------------------------

def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as handle:
            return [int(p) for p in handle.read().split()]
    except OSError:
        return []


def _tree(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(_children(current))
    return found


def _rss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _pss_kib(pid: int) -> int:
    """Proportional set size: shared pages (Ray's object store) are split, not double counted."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as handle:
            for line in handle:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


@dataclass
class Measured:
    wall_s: float
    peak_tree_pss_mib: float
    peak_rss_mib: float
    returncode: int
    output: str


def measure(cmd: list[str], env: dict[str, str] | None = None) -> Measured:
    """Run ``cmd``; wall time, peak PSS summed over its process tree and peak RSS of the
    process itself, both sampled every 0.1 s (so Ray's raylet, GCS and workers count).
    ru_maxrss is not used: a forked child starts with its parent's high-water mark."""
    log = Path(os.environ.get("TMPDIR", "/tmp")) / f"score-bench-{os.getpid()}.log"
    with open(log, "w") as out:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
        peak = [0, 0]
        done = threading.Event()

        def sample() -> None:
            while not done.is_set():
                peak[0] = max(peak[0], sum(_pss_kib(p) for p in _tree(proc.pid)))
                peak[1] = max(peak[1], _rss_kib(proc.pid))
                done.wait(0.1)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        _, status = os.waitpid(proc.pid, 0)
        wall = time.perf_counter() - start
        done.set()
        sampler.join()
    proc.returncode = os.waitstatus_to_exitcode(status)
    text = log.read_text()
    log.unlink()
    return Measured(wall, peak[0] / 1024, peak[1] / 1024, proc.returncode, text)


def _run(cmd: list[str], what: str, env: dict[str, str] | None = None) -> float:
    start = time.perf_counter()
    result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"{what} failed:\n{result.stdout}\n{result.stderr}")
    return time.perf_counter() - start


# --- the reference: pandas + scikit-learn ---------------------------------------------------

def reference_features(events: Any, baselines: Any, feature_names: tuple[str, ...],
                       deviation_columns: tuple[str, ...]) -> Any:
    """The product's event features, written the straightforward pandas/numpy way.

    Mirrors uba/features/events.py (feature set ``uba-features-5``): attach the user's
    baseline row (population row for unknown users), log1p lengths, signed z against the
    user, one-sided Gaussian surprises beyond a noise level, circular hour distance,
    category rarities picked per row, first use of a device/event type, everything
    made finite and clipped. Only numeric constants are taken from the product module.
    """
    import pandas as pd

    from uba.features import events as product

    population = "__population__"
    z_clip, rarity_clip, hour_clip = product.Z_CLIP, product.RARITY_CLIP, product.HOUR_DEVIATION_CLIP
    noise, rarity_noise = product.NOISE_NATS, product.RARITY_NOISE_NATS
    base = baselines.set_index("user_id")
    known = events["user_id"].isin(base.index.drop(population, errors="ignore")).to_numpy()
    key = events["user_id"].where(known, population)
    joined = base.reindex(key.to_numpy())
    joined.index = events.index
    joined.loc[~known, ["history_days", "days_active"]] = 0
    df = pd.concat([events, joined], axis=1)
    devices = [c[len("rarity_device_"):] for c in base.columns if c.startswith("rarity_device_")]
    kinds = [c[len("rarity_event_"):] for c in base.columns if c.startswith("rarity_event_")]

    def col(name: str) -> np.ndarray:
        return df[name].to_numpy(dtype=np.float64)

    def finite(values: Any, low: float, high: float) -> np.ndarray:
        arr = np.asarray(values, dtype=np.float64)
        return np.clip(np.where(np.isnan(arr), 0.0, arr), low, high)

    def pick(column: Any, cases: dict[Any, str], default: np.ndarray | float) -> np.ndarray:
        out = np.broadcast_to(np.asarray(default, dtype=np.float64), (len(df),)).copy()
        for value, name in cases.items():
            mask = (column == value).to_numpy()
            out[mask] = df.loc[mask, name].to_numpy(dtype=np.float64)
        return out

    def code(column: Any, names: list[str]) -> np.ndarray:
        out = np.full(len(df), float(len(names)))
        for index, name in enumerate(names):
            out[(column == name).to_numpy()] = float(index)
        return out

    def surprise(z: np.ndarray) -> np.ndarray:
        return z * z / 2.0

    def beyond(nats: np.ndarray, level: float) -> np.ndarray:
        return np.clip(nats - level, 0.0, None)

    with np.errstate(divide="ignore", invalid="ignore"):
        log_duration = np.log1p(col("session_duration_sec"))
        log_actions = np.log1p(col("events_in_session"))
        hour, weekday = col("hour_of_day"), col("day_of_week")
        weekday_rarity = pick(df["day_of_week"], {d: f"rarity_dow_{d}" for d in range(7)},
                              col("unseen_rarity_dow"))
        length_z = finite((log_duration - col("mean_log_duration")) / col("sd_log_duration"), -z_clip, z_clip)
        actions_z = finite((log_actions - col("mean_log_actions")) / col("sd_log_actions"), -z_clip, z_clip)
        diff = np.abs(hour - col("hour_mean")) % 24.0
        hour_z = finite(np.minimum(diff, 24.0 - diff) / col("hour_spread"), 0.0, hour_clip)
        device_nats = finite(pick(df["device_type"], {d: f"rarity_device_{d}" for d in devices},
                                  col("unseen_rarity_device")), 0.0, rarity_clip)
        event_nats = finite(pick(df["event_type"], {e: f"rarity_event_{e}" for e in kinds},
                                 col("unseen_rarity_event")), 0.0, rarity_clip)
        is_download = (df["event_type"] == "download").to_numpy().astype(np.float64)
        download_rarity = is_download * finite(col("rarity_event_download"), 0.0, rarity_clip)

        def never(column: str, kind: str, names: list[str], evidence: str) -> np.ndarray:
            share = pick(df[column], {x: f"share_{kind}_{x}" for x in names}, 0.0)
            share = np.where(np.isnan(share), 0.0, share)
            weight = col(evidence) / (col(evidence) + col(f"share_prior_{kind}"))
            return np.where(known & (share <= 0.0), weight, 0.0)

        out = pd.DataFrame(index=df.index)
        out["log_session_duration"] = finite(log_duration, 0.0, np.inf)
        out["log_events_in_session"] = finite(log_actions, 0.0, np.inf)
        out["event_hour"] = finite(hour, 0.0, 23.0)
        out["event_weekday"] = finite(weekday, 0.0, 6.0)
        out["event_type_code"] = finite(code(df["event_type"], kinds), 0.0, len(kinds))
        out["device_code"] = finite(code(df["device_type"], devices), 0.0, len(devices))
        out["session_length_excess"] = beyond(surprise(np.clip(length_z, 0.0, None)), noise)
        out["actions_excess"] = beyond(surprise(np.clip(actions_z, 0.0, None)), noise)
        out["hour_deviation"] = beyond(surprise(hour_z), noise)
        out["device_rarity"] = beyond(device_nats, rarity_noise)
        out["event_type_rarity"] = beyond(event_nats, rarity_noise)
        out["time_of_week_rarity"] = beyond(weekday_rarity, rarity_noise)
        out["first_use"] = finite(never("device_type", "device", devices, "n_sessions")
                                  + never("event_type", "event", kinds, "n_events"), 0.0, 2.0)
        download_surprise = np.where(download_rarity > 0,
                                     download_rarity + surprise(np.clip(actions_z, 0.0, None)), 0.0)
        out["download_intensity"] = beyond(download_surprise, product.DOWNLOAD_NOISE_NATS)
        out["max_surprise"] = out[list(deviation_columns)].max(axis=1)
        out["total_surprise"] = out[list(deviation_columns)].sum(axis=1)
        out["log_history_days"] = finite(np.log1p(col("history_days")), 0.0, np.inf)
    missing = [c for c in feature_names if c not in out.columns]
    if missing:
        raise SystemExit(f"the reference does not implement features {missing}; update it")
    return out[list(feature_names)]


def reference_run(work: Path, day: date, output: Path) -> None:
    """The timed reference process: read, features, scale + score, threshold, write."""
    import pandas as pd

    from uba.features.events import DEVIATION_COLUMNS, FEATURE_COLUMNS

    with open(work / "reference-model.pkl", "rb") as handle:
        model = pickle.load(handle)
    events = pd.read_parquet(work / "data" / "events" / f"event_date={day}")
    baselines = pd.read_parquet(work / "data" / "baselines" / f"as_of={day}" / "baselines.parquet")
    features = reference_features(events, baselines, FEATURE_COLUMNS, DEVIATION_COLUMNS)
    scores = -model["forest"].score_samples(model["scaler"].transform(features.to_numpy()))
    result = pd.DataFrame({
        "event_id": events["event_id"], "user_id": events["user_id"], "timestamp": events["timestamp"],
        "anomaly_score": scores, "is_anomaly": scores >= model["threshold"], "threshold": model["threshold"],
    }).sort_values(["timestamp", "event_id"])
    output.parent.mkdir(parents=True, exist_ok=True)
    result.to_parquet(output, index=False)


# --- building the data set ------------------------------------------------------------------

def enlarge_day(data_dir: Path, day: date, target: int) -> int:
    """Replace D's events by ~target events: D's own rows repeated under new event ids."""
    import polars as pl

    from uba import io
    from uba.ingest import ingest_frame
    from uba.settings import load_settings

    folder = io.partition_dir(data_dir, io.EVENTS, day)
    original = pl.read_parquet(io.partition_files(data_dir, io.EVENTS, day))
    shutil.rmtree(folder)
    copies = max(1, round(target / original.height))
    big = pl.concat([
        original.with_columns(
            (pl.col("event_id") + f"-r{i}").alias("event_id"),
            (pl.col("session_id") + f"-r{i}").alias("session_id"),
        ) for i in range(copies)
    ])
    settings = load_settings(overrides={"paths": {"data_dir": data_dir}}, env={})
    ingest_frame(big, data_dir, settings, source=f"benchmark enlarged {day}")
    return big.height


def fit_reference_model(work: Path, data_dir: Path, model_dir: Path, train_end: date) -> None:
    """scikit-learn twin of the bundle: same settings, fitted on a sample of the training features."""
    from sklearn.ensemble import IsolationForest
    from sklearn.preprocessing import StandardScaler

    from uba.artifacts import load_bundle
    from uba.pipeline import feature_matrix, window_features
    from uba.settings import load_settings

    settings = load_settings(overrides={"paths": {"data_dir": data_dir}}, env={})
    days = [train_end - timedelta(days=i) for i in range(TRAIN_WINDOW_DAYS - 1, -1, -1)]
    features = window_features(data_dir, days, settings).collect()
    if features.height > REFERENCE_TRAIN_ROWS:
        features = features.sort("event_id").sample(n=REFERENCE_TRAIN_ROWS, seed=0)
    bundle = load_bundle(model_dir)
    X = feature_matrix(features, bundle.detector.feature_names)
    scaler = StandardScaler().fit(X)
    model = settings.model
    forest = IsolationForest(n_estimators=model.n_estimators, max_samples=model.max_samples,
                             contamination=model.contamination, random_state=model.random_state)
    forest.fit(scaler.transform(X))
    train_scores = -forest.score_samples(scaler.transform(X))
    threshold = float(np.percentile(train_scores, settings.threshold.percentile))
    with open(work / "reference-model.pkl", "wb") as handle:
        pickle.dump({"scaler": scaler, "forest": forest, "threshold": threshold}, handle)


def feature_agreement(data_dir: Path, day: date) -> dict[str, float]:
    """Largest |reference - product| per feature on a sample of D's events."""
    import polars as pl

    from uba import io
    from uba.features.events import DEVIATION_COLUMNS, FEATURE_COLUMNS, event_features

    events = io.scan_events(data_dir, day).head(FEATURE_CHECK_ROWS).collect()
    baselines = pl.read_parquet(data_dir / "baselines" / f"as_of={day}" / "baselines.parquet")
    product = event_features(events.lazy(), baselines.lazy()).collect().select(FEATURE_COLUMNS).to_numpy()
    reference = reference_features(events.to_pandas(), baselines.to_pandas(), FEATURE_COLUMNS,
                                   DEVIATION_COLUMNS).to_numpy()
    return {name: float(np.max(np.abs(product[:, i] - reference[:, i])))
            for i, name in enumerate(FEATURE_COLUMNS)}


# --- report -----------------------------------------------------------------------------------

def machine() -> dict[str, str]:
    import polars as pl
    import ray
    import sklearn

    cpu = "unknown"
    with open("/proc/cpuinfo") as handle:
        for line in handle:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as handle:
        ram_kib = int(handle.readline().split()[1])
    return {"nproc": str(os.cpu_count()), "cpu": cpu, "ram": f"{ram_kib / 1024 / 1024:.1f} GiB",
            "load average at start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
            "python": platform.python_version(), "polars": pl.__version__, "ray": ray.__version__,
            "scikit-learn": sklearn.__version__}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--history-days", type=int, default=28)
    parser.add_argument("--day-events", type=int, default=2_000_000)
    parser.add_argument("--start", type=date.fromisoformat, default=date(2026, 2, 1))
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "uba-score-throughput")
    parser.add_argument("--keep", action="store_true", help="keep --work for a later --reuse")
    parser.add_argument("--output", type=Path, default=None, help="Markdown file for the results")
    parser.add_argument("--reuse", action="store_true",
                        help="keep what --work already holds (data, model, reference model); build the rest")
    parser.add_argument("--repeat", type=int, default=3, help="rounds of the three runs (median reported)")
    parser.add_argument("--reference-run", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--date", type=date.fromisoformat, help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    if args.reference_run:
        reference_run(args.work, args.date, args.work / "reference" / "scores.parquet")
        return

    host = machine()
    day = args.start + timedelta(days=args.history_days)
    train_end = day - timedelta(days=1)
    data_dir, model_dir = args.work / "data", args.work / "models"
    setup: dict[str, float] = {}
    if not args.reuse:
        shutil.rmtree(args.work, ignore_errors=True)
    if not (data_dir / "events").is_dir():
        setup["generate"] = _run([str(UBA), "generate", "--out", str(data_dir), "--users", str(args.users),
                                  "--days", str(args.history_days + 1), "--start", args.start.isoformat(),
                                  "--seed", str(args.seed)], "generate")
        began = time.perf_counter()
        enlarge_day(data_dir, day, args.day_events)
        setup["enlarge day D"] = time.perf_counter() - began
    if not (model_dir / "LATEST").is_file():
        setup["train"] = _run([str(UBA), "train", "--data-dir", str(data_dir), "--model-dir", str(model_dir),
                               "--end-date", train_end.isoformat(), "--window-days", str(TRAIN_WINDOW_DAYS)],
                              "train")
    if not (args.work / "reference-model.pkl").is_file():
        began = time.perf_counter()
        fit_reference_model(args.work, data_dir, model_dir, train_end)
        setup["reference fit"] = time.perf_counter() - began

    env = {**os.environ}
    env.pop("RAY_ADDRESS", None)
    score_cmd = [str(UBA), "score", "--date", day.isoformat(), "--data-dir", str(data_dir),
                 "--model-dir", str(model_dir)]
    contenders: dict[str, tuple[list[str], Path | None]] = {
        RAY_LABEL: ([*score_cmd, "--output-dir", str(args.work / "out-ray")], args.work / "out-ray"),
        IN_PROCESS_LABEL: ([*score_cmd, "--output-dir", str(args.work / "out-inproc"), "--in-process"],
                           args.work / "out-inproc"),
        REFERENCE_LABEL: ([sys.executable, str(Path(__file__).resolve()), "--reference-run",
                           "--work", str(args.work), "--date", day.isoformat()], None),
    }
    runs: dict[str, list[tuple[Measured, dict[str, Any] | None]]] = {label: [] for label in contenders}
    for round_no in range(1, args.repeat + 1):  # interleaved, so load changes hit every contender
        for label, (cmd, out) in contenders.items():
            if out is not None:
                shutil.rmtree(out, ignore_errors=True)
            measured = measure(cmd, env)
            if measured.returncode != 0:
                raise SystemExit(f"{label} failed:\n{measured.output}")
            manifest = (json.loads((out / "runs" / f"event_date={day}" / "manifest.json").read_text())
                        if out is not None else None)
            runs[label].append((measured, manifest))
            print(f"round {round_no} {label}: {measured.wall_s:.1f} s, "
                  f"peak tree PSS {measured.peak_tree_pss_mib:.0f} MiB", flush=True)
    agreement = feature_agreement(data_dir, day)
    report = render(args, host, day, setup, runs, agreement)
    print(report)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(report)
    if not args.keep:
        shutil.rmtree(args.work, ignore_errors=True)


def _median_run(results: list[tuple[Measured, dict[str, Any] | None]]) -> tuple[Measured, dict[str, Any] | None]:
    ordered = sorted(results, key=lambda r: r[0].wall_s)
    return ordered[(len(ordered) - 1) // 2]


def render(args: argparse.Namespace, host: dict[str, str], day: date, setup: dict[str, float],
           runs: dict[str, list[tuple[Measured, dict[str, Any] | None]]], agreement: dict[str, float]) -> str:
    medians = {label: _median_run(results) for label, results in runs.items()}
    first_manifest = medians[RAY_LABEL][1] or {}
    events = first_manifest["counts"]["input_rows"]
    reference = medians[REFERENCE_LABEL][0]
    command = " ".join(["python", "benchmarks/score_throughput.py", *sys.argv[1:]])
    lines = [
        "# `score --date` throughput: uba on Ray vs a single-process pandas + scikit-learn job",
        "",
        f"Recorded {datetime.now(UTC):%Y-%m-%d %H:%M} UTC by `{command}`.",
        "",
        "| machine | |", "|---|---|",
        *(f"| {k} | {v} |" for k, v in host.items()),
        "",
        f"Data: {args.users:,} users, {args.history_days} days of history at the generator's normal "
        f"density, and the scored day {day} enlarged to **{events:,} events** (D's own events repeated "
        f"under new ids, stored through the ingest writer). Model: `uba-batch train` on the "
        f"{TRAIN_WINDOW_DAYS} days before D. Baselines for D come from the aggregates of the "
        f"{first_manifest['inputs']['lookback_days']} lookback days.",
        "",
        "Setup (not part of the comparison): "
        + (", ".join(f"{k} {v:.0f} s" for k, v in setup.items()) or "reused from an earlier run") + ".",
        "",
        f"Each run in its own process, {args.repeat} interleaved rounds; wall time and events/s of the "
        "median round, best round beside it, memory the largest of the rounds.",
        "",
        "| run | wall s (median) | wall s (best) | events/s (median) | peak memory MiB (PSS, process tree) "
        "| peak RSS MiB (main process) | events/s vs reference |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for label, results in runs.items():
        median = medians[label][0]
        best = min(m.wall_s for m, _ in results)
        pss = max(m.peak_tree_pss_mib for m, _ in results)
        rss = max(m.peak_rss_mib for m, _ in results)
        lines.append(f"| {label} | {median.wall_s:.1f} | {best:.1f} | {events / median.wall_s:,.0f} | "
                     f"{pss:,.0f} | {rss:,.0f} | {reference.wall_s / median.wall_s:.2f}x |")
    uba_runs = {label: m for label, (_, m) in medians.items() if m}
    lines += ["", "Stage timings of the median uba runs (seconds, from their manifests):", "",
              "| stage | " + " | ".join(uba_runs) + " |",
              "|---|" + "---:|" * len(uba_runs)]
    stages = sorted({s for m in uba_runs.values() for s in m["timings_sec"]})
    for stage in stages:
        values = [f"{m['timings_sec'].get(stage, 0.0):.2f}" for m in uba_runs.values()]
        lines.append(f"| {stage} | " + " | ".join(values) + " |")
    ray_manifest = uba_runs[RAY_LABEL]
    execution = ray_manifest.get("execution", {})
    lines += [
        "",
        f"Ray run: {execution.get('workers')} workers, {execution.get('shards')} shards per chunk, "
        f"{execution.get('chunks')} chunks of at most {execution.get('chunk_rows'):,} events; "
        f"{ray_manifest['counts']['flagged_rows']:,} events flagged; row conservation "
        f"{'ok' if ray_manifest['row_conservation']['ok'] else 'FAILED'}.",
        "",
        f"Same features: largest |reference - uba| over {FEATURE_CHECK_ROWS:,} events of D, per feature: "
        + ", ".join(f"{k} {v:.1e}" for k, v in agreement.items()) + ".",
        "",
        "What each side does. **uba** (`uba-batch score --date`): count and quarantine lookup, "
        "aggregates of D (computed from D's events), baselines as of D from the aggregates, "
        "features through the shared feature module, the compact forest sharded over Ray tasks "
        "(or in-process), thresholds, plain-word reasons for every event, flagged rows with "
        "the baseline summary, deterministic Parquet parts in a staging directory, atomic "
        "swap, manifest with checksums, baseline snapshot for the API. **Reference** (one "
        "Python process): pandas reads D's events and the baseline table as of D (it does not "
        "rebuild baselines: that is the `aggregates` + `baselines` stages on the uba side), "
        "computes the same event features with pandas/numpy, scikit-learn StandardScaler + "
        "IsolationForest.score_samples (same settings, fitted on a sample of the same "
        "training features), thresholds, and writes one Parquet of scores without reasons. "
        "Peak memory is the proportional set size summed over the process and all its "
        "descendants (Ray's GCS, raylet, workers and shared-memory object store included), "
        "sampled every 0.1 s. The machine is shared with other jobs: wall times vary with its "
        "load (see the load average), memory much less.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
