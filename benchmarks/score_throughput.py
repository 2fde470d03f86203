"""End-to-end `uba-batch score --date` throughput and peak memory on a large day, against
two single-process pandas + scikit-learn jobs, every contender timed in the same run.

The batch speed benchmark. What it does (work files under --work, default
<tmp>/uba-score-throughput, outside the repository; about 150 MB at full size, removed at
the end unless --keep):

1. `uba-batch generate` --users users x (--history-days + 1) days; the last day is D.
2. Day D is enlarged to ~--day-events events (D's own events repeated with new event
   ids) and stored through the real ingest writer, so D is one large day while the
   history keeps its normal density.
3. `uba-batch train` on the 21 days before D.
4. Two scikit-learn baselines are fitted (not timed): the pandas reference's twin of the
   bundle (same features, same settings, on a sample of the training features) and the
   seed-style script's model (`seed_style_score.py --fit`, the seed's features).
5. If a cluster contender is selected, a warm single-node Ray cluster is started on
   127.0.0.1 (`ray start --head --block`, its own process group, stopped by group id at
   the end, also on error or Ctrl-C) and warmed by one untimed `score --ray-address`
   run. Otherwise one untimed run of the first uba contender warms the data directory
   (the daily aggregates of the lookback and of D are computed once per day, by the
   first run; every timed run finds them, as the nightly job does).
6. --rounds interleaved rounds; in each, every selected contender runs once, each in its
   own process, with wall time, peak PSS over its process tree and peak RSS of the
   process itself sampled every 0.1 s, and the load average before and after:

   | --only label | run |
   |---|---|
   | embedded   | `uba-batch score --date D`, the default (no address: threads in-process below
   |            | `ray.min_rows_for_ray` events, an embedded Ray above; start-up included) |
   | embedded-ray | the same with `UBA_RAY__MIN_ROWS_FOR_RAY=0`: the embedded Ray whatever the size |
   | cluster    | `... --ray-address A` on the warm cluster (all its CPUs) |
   | cluster-w1 | `... --ray-address A --workers 1` |
   | cluster-w2 | `... --ray-address A --workers 2` |
   | in-process | `... --in-process` |
   | reference  | pandas + scikit-learn with the product's features, reading the baseline table as of D |
   | seed       | `seed_style_score.py --run`: the seed's features, baselines rebuilt from 28 raw days |

   For uba runs the stage timings come from each run's manifest
   (`<output-dir>/runs/event_date=D/manifest.json`, `timings_sec`, whatever stages it
   has). "Start-up not counted" = the manifest's `duration_sec` minus its `ray_init`
   stage(s); the report gives that and the process wall time as is.
7. The reference's features are checked against the product's `event_features` on a
   sample of D's events, and the results (medians, every round, the targets'
   ratios) are written as Markdown.

Run from the repository root; the full-size recording:
    .venv/bin/python benchmarks/score_throughput.py --output benchmarks/results/score_throughput.md
A quick check at small size:
    .venv/bin/python benchmarks/score_throughput.py --users 2000 --day-events 100000 --rounds 1
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import pickle
import platform
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
UBA = BIN / "uba-batch"
RAY = BIN / "ray"
SEED_SCRIPT = HERE / "seed_style_score.py"
TRAIN_WINDOW_DAYS = 21
LOOKBACK_DAYS = 28
REFERENCE_TRAIN_ROWS = 300_000
FEATURE_CHECK_ROWS = 200_000
LOOPBACK = "127.0.0.1"
STARTUP_STAGES = ("ray_init",)  # a stage named so, or nested under it ("ray_init.x"), is start-up

# --only label -> table label, in run order
LABELS: dict[str, str] = {
    "embedded": "uba score (the default, no address)",
    "embedded-ray": "uba score, embedded Ray forced (ray.min_rows_for_ray=0)",
    "cluster": "uba score --ray-address (warm cluster)",
    "cluster-w1": "uba score --ray-address --workers 1",
    "cluster-w2": "uba score --ray-address --workers 2",
    "in-process": "uba score --in-process",
    "reference": "pandas + scikit-learn reference",
    "seed": "seed-style pandas script",
}
CLUSTER_KEYS = ("cluster", "cluster-w1", "cluster-w2")
UBA_KEYS = ("embedded", "embedded-ray", *CLUSTER_KEYS, "in-process")
# kept for importers of the previous version
RAY_LABEL, IN_PROCESS_LABEL, REFERENCE_LABEL = LABELS["embedded"], LABELS["in-process"], LABELS["reference"]


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


def status_kib(pid: int, *fields: str) -> dict[str, int]:
    """``fields`` (e.g. VmRSS, VmHWM, RssAnon, RssShmem) of /proc/<pid>/status in KiB; 0 when absent."""
    values = dict.fromkeys(fields, 0)
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                name, _, rest = line.partition(":")
                if name in values:
                    values[name] = int(rest.split()[0])
    except (OSError, ValueError, IndexError):
        pass
    return values


def _rss_kib(pid: int) -> int:
    return status_kib(pid, "VmRSS")["VmRSS"]


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
    peak_hwm_mib: float = 0.0  # the main process's own VmHWM, last sampled value
    peak_anon_mib: float = 0.0  # the main process's largest sampled RssAnon (private memory)
    peak_shmem_mib: float = 0.0  # the main process's largest sampled RssShmem (e.g. mapped object store)
    load_before: tuple[float, float, float] = (0.0, 0.0, 0.0)
    load_after: tuple[float, float, float] = (0.0, 0.0, 0.0)


def measure(cmd: list[str], env: dict[str, str] | None = None, tree: bool = True,
            extra_roots: tuple[int, ...] = ()) -> Measured:
    """Run ``cmd``; wall time, peak PSS summed over its process tree and peak RSS / VmHWM of
    the process itself, sampled every 0.1 s (so Ray's raylet, GCS and workers count in the
    tree), and the load average before and after. ru_maxrss is not used: a forked child
    starts with its parent's high-water mark. The trees of ``extra_roots`` (a joined
    cluster's head) are added to the PSS sum; ``tree=False`` skips the (costlier) PSS walk.
    The child runs in its own session; if this process is interrupted, that group is killed."""
    log = Path(os.environ.get("TMPDIR", "/tmp")) / f"score-bench-{os.getpid()}.log"
    load_before = os.getloadavg()
    with open(log, "w") as out:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
        peak = {"pss": 0, "VmRSS": 0, "VmHWM": 0, "RssAnon": 0, "RssShmem": 0}
        done = threading.Event()

        def sample() -> None:
            while not done.is_set():
                if tree:
                    pids = {p for root in (proc.pid, *extra_roots) for p in _tree(root)}
                    peak["pss"] = max(peak["pss"], sum(_pss_kib(p) for p in pids))
                own = status_kib(proc.pid, "VmRSS", "VmHWM", "RssAnon", "RssShmem")
                for name, value in own.items():
                    peak[name] = max(peak[name], value)
                done.wait(0.1)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            _, status = os.waitpid(proc.pid, 0)
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise
        finally:
            wall = time.perf_counter() - start
            done.set()
            sampler.join()
    proc.returncode = os.waitstatus_to_exitcode(status)
    text = log.read_text()
    log.unlink()
    mib = {name: value / 1024 for name, value in peak.items()}
    return Measured(wall, mib["pss"], mib["VmRSS"], proc.returncode, text,
                    peak_hwm_mib=max(mib["VmHWM"], mib["VmRSS"]), peak_anon_mib=mib["RssAnon"],
                    peak_shmem_mib=mib["RssShmem"], load_before=load_before, load_after=os.getloadavg())


def _run(cmd: list[str], what: str, env: dict[str, str] | None = None) -> float:
    start = time.perf_counter()
    result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"{what} failed:\n{result.stdout}\n{result.stderr}")
    return time.perf_counter() - start


# --- a warm Ray cluster on loopback ---------------------------------------------------------

def _port_free(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex((LOOPBACK, port)) != 0


def _free_ports(base: int, count: int = 4) -> list[int]:
    """``count`` consecutive free ports from ``base`` up (above Ray's worker range 10002-19999)."""
    for first in range(base, base + 400, count):
        if all(_port_free(first + i) for i in range(count)):
            return [first + i for i in range(count)]
    raise SystemExit(f"no {count} free consecutive ports in {base}..{base + 400}")


@functools.cache
def cluster_token() -> str:
    """One auth token per benchmark run, passed by environment (a fresh machine has no
    ~/.ray/auth_token, and a token-auth head refuses to start without one)."""
    return secrets.token_hex(32)


def cluster_env() -> dict[str, str]:
    """Environment for `ray start` and for jobs joining it (DESIGN.md, Ray section)."""
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
           "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": cluster_token()}
    env.pop("RAY_ADDRESS", None)
    return env


def _stop_group(process: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=5)
    # `ray start --block` may leave its children shutting down; make sure the group is gone
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


@dataclass
class Cluster:
    address: str
    head_pid: int  # `ray start --block`; its process group holds GCS, raylet and workers


@contextlib.contextmanager
def warm_cluster(log_path: Path, cpus: int = 2, base_port: int = 26379) -> Iterator[Cluster]:
    """A single-node Ray cluster (`ray start --head --block`) on 127.0.0.1 in its own process
    group; yields its address and pid; stopped by group id on exit, error or interrupt."""
    gcs, client, dashboard, agent = _free_ports(base_port)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log = log_path.open("wb")
    head = subprocess.Popen(
        [str(RAY), "start", "--head", "--block", f"--port={gcs}", f"--node-ip-address={LOOPBACK}",
         f"--num-cpus={cpus}", "--include-dashboard=false", "--disable-usage-stats",
         f"--ray-client-server-port={client}", f"--dashboard-port={dashboard}",
         f"--dashboard-agent-listen-port={agent}"],
        env=cluster_env(), stdout=log, stderr=log, start_new_session=True)
    address = f"{LOOPBACK}:{gcs}"
    try:
        deadline = time.monotonic() + 120
        while _port_free(gcs):
            if head.poll() is not None:
                raise SystemExit(f"ray start --head exited early; see {log_path}")
            if time.monotonic() > deadline:
                raise SystemExit(f"the Ray head did not come up in 120 s; see {log_path}")
            time.sleep(0.2)
        yield Cluster(address, head.pid)
    finally:
        _stop_group(head)
        log.close()
        # `ray start` registers itself as this machine's current cluster; a later plain
        # ray.init() elsewhere would try to join the dead head, so unregister it
        current = Path(tempfile.gettempdir()) / "ray" / "ray_current_cluster"
        with contextlib.suppress(OSError):
            if current.read_text().strip() == address:
                current.unlink()


@contextlib.contextmanager
def terminate_as_exit() -> Iterator[None]:
    """SIGTERM / SIGHUP raise SystemExit, so `finally` blocks (cluster shutdown) run."""
    def handler(signum: int, _frame: Any) -> None:
        raise SystemExit(f"stopped by signal {signum}")

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


# --- manifests ----------------------------------------------------------------------------

def read_manifest(output_dir: Path, day: date) -> dict[str, Any]:
    return json.loads((output_dir / "runs" / f"event_date={day}" / "manifest.json").read_text())


def flat_seconds(timings: Any, prefix: str = "") -> dict[str, float]:
    """Stage seconds of a manifest's ``timings_sec``, nested dicts flattened to ``a.b``."""
    out: dict[str, float] = {}
    if isinstance(timings, dict):
        for name, value in timings.items():
            key = f"{prefix}{name}"
            if isinstance(value, dict):
                out.update(flat_seconds(value, key + "."))
            elif isinstance(value, int | float) and not isinstance(value, bool):
                out[key] = float(value)
    return out


def startup_seconds(stages: dict[str, float]) -> float:
    """Seconds of the start-up stages (``ray_init``; if it is nested, its parts, not both)."""
    total = 0.0
    for name in STARTUP_STAGES:
        if name in stages:
            total += stages[name]
        else:
            total += sum(v for k, v in stages.items() if k.startswith(name + "."))
    return total


def job_seconds(manifest: dict[str, Any]) -> float | None:
    """The run's own wall time from its manifest (``duration_sec``, else started/finished)."""
    if isinstance(manifest.get("duration_sec"), int | float):
        return float(manifest["duration_sec"])
    with contextlib.suppress(KeyError, TypeError, ValueError):
        return (datetime.fromisoformat(manifest["finished_at"])
                - datetime.fromisoformat(manifest["started_at"])).total_seconds()
    return None


def shard_records(manifest: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The per-shard records of a manifest: ``execution.shard_records`` (or a list under
    ``execution.shards``); empty when the driver does not record shards."""
    execution = (manifest or {}).get("execution") or {}
    for key in ("shard_records", "shards"):
        if isinstance(execution.get(key), list):
            return [r for r in execution[key] if isinstance(r, dict)]
    return []


def shard_summary(manifest: dict[str, Any] | None) -> str | None:
    """"N shard records on K node(s) (node: count, ...), P worker processes, ..." or None."""
    records = shard_records(manifest)
    if not records:
        return None
    nodes = Counter(str(r.get("node_id", "?")) for r in records)
    per_node = ", ".join(f"{node[:12]}: {count}" for node, count in sorted(nodes.items()))
    text = f"{len(records)} shard records on {len(nodes)} node(s) ({per_node})"
    pids = {(r.get("node_id"), r.get("pid")) for r in records if r.get("pid") is not None}
    if pids:
        text += f", {len(pids)} worker process(es)"
    fetched = [r["fetched_inputs"] for r in records if isinstance(r.get("fetched_inputs"), bool)]
    if fetched:
        text += f", shared inputs fetched {sum(fetched)} time(s)"
    return text


def shard_step_seconds(manifest: dict[str, Any] | None) -> dict[str, float]:
    """Per-shard step seconds summed over the shards, as ``shards Σ <step>`` (busy time,
    not wall: shards run in parallel)."""
    total: dict[str, float] = {}
    for record in shard_records(manifest):
        for step, value in flat_seconds(record.get("seconds")).items():
            total[f"shards Σ {step}"] = total.get(f"shards Σ {step}", 0.0) + value
    return total


# --- one run of one contender ---------------------------------------------------------------

@dataclass
class Contender:
    key: str
    cmd: list[str]
    env: dict[str, str]
    output_dir: Path | None = None  # uba runs: the manifest is read from here
    summary: Path | None = None  # seed-style run: its JSON summary
    extra_roots: tuple[int, ...] = ()  # more process trees whose PSS counts (the joined cluster)

    @property
    def label(self) -> str:
        return LABELS[self.key]


@dataclass
class Run:
    key: str
    round: int
    measured: Measured
    events: int
    manifest: dict[str, Any] | None = None
    stages: dict[str, float] = field(default_factory=dict)
    shard_steps: dict[str, float] = field(default_factory=dict)  # summed over shard records

    @property
    def wall(self) -> float:
        return self.measured.wall_s

    @property
    def ray_init(self) -> float | None:
        return startup_seconds(self.stages) if self.manifest is not None else None

    @property
    def job(self) -> float | None:
        return job_seconds(self.manifest) if self.manifest is not None else None

    @property
    def warm(self) -> float:
        """Seconds without start-up: the manifest's duration minus ray_init (uba runs);
        the process wall time for the pandas scripts, which have no start-up stage."""
        if self.manifest is None or self.job is None:
            return self.wall
        return self.job - (self.ray_init or 0.0)

    def rate(self, warm: bool = False) -> float:
        return self.events / (self.warm if warm else self.wall)


def run_contender(contender: Contender, day: date, events: int, round_no: int) -> Run:
    if contender.output_dir is not None:
        shutil.rmtree(contender.output_dir, ignore_errors=True)
    measured = measure(contender.cmd, contender.env, extra_roots=contender.extra_roots)
    if measured.returncode != 0:
        raise SystemExit(f"{contender.label} failed (exit {measured.returncode}):\n{measured.output}")
    run = Run(contender.key, round_no, measured, events)
    if contender.output_dir is not None:
        run.manifest = read_manifest(contender.output_dir, day)
        run.stages = flat_seconds(run.manifest.get("timings_sec"))
        run.shard_steps = shard_step_seconds(run.manifest)
        scored = (run.manifest.get("counts") or {}).get("input_rows")
        if scored is not None and scored != events:
            print(f"warning: {contender.label} counted {scored:,} input rows, the day has {events:,}",
                  file=sys.stderr)
    elif contender.summary is not None and contender.summary.is_file():
        run.stages = flat_seconds(json.loads(contender.summary.read_text()).get("timings_sec"))
    return run


def describe(run: Run) -> str:
    m = run.measured
    text = f"round {run.round} {run.key}: wall {run.wall:.1f} s"
    if run.manifest is not None:
        text += f" (job {run.job or 0:.1f} s, ray_init {run.ray_init or 0:.1f} s, without start-up {run.warm:.1f} s)"
    text += (f", {run.rate():,.0f} events/s, peak tree PSS {m.peak_tree_pss_mib:,.0f} MiB, main RSS "
             f"{m.peak_hwm_mib:,.0f} MiB, load {m.load_before[0]:.2f} -> {m.load_after[0]:.2f}")
    shards = shard_summary(run.manifest)
    return text + (f"; {shards}" if shards else "")


# --- the reference: pandas + scikit-learn ---------------------------------------------------

def reference_features(events: Any, baselines: Any, feature_names: tuple[str, ...],
                       deviation_columns: tuple[str, ...]) -> Any:
    """The product's event features, written the straightforward pandas/numpy way.

    Mirrors uba/features/compiled.py (feature set ``uba-features-8``): attach the user's
    baseline row (population row for unknown users), log1p lengths, signed z against the
    user (the length also against the user's length for that many actions), one-sided Gaussian surprises beyond a noise level, circular hour distance,
    category rarities picked per row, first use of a device/event type, everything
    made finite and clipped. Only numeric constants are taken from the product module.
    """
    import pandas as pd

    from uba.features import compiled as product

    population = "__population__"
    z_clip, rarity_clip, hour_clip = product.Z_CLIP, product.RARITY_CLIP, product.HOUR_DEVIATION_CLIP
    line_range_sds = product.LINE_RANGE_SDS
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
        def line(actions):
            return col("mean_log_duration") + col("slope_log_duration") * (actions - col("mean_log_actions"))

        spread = line_range_sds * col("sd_log_actions")  # never below the line at the usual actions' edge
        held = np.minimum(np.maximum(log_actions, col("mean_log_actions") - spread), col("mean_log_actions") + spread)
        at_edge = np.where(line(held) > line(log_actions), line(held), line(log_actions))
        expected = np.maximum(np.where(np.isnan(held), held, at_edge), 0.0)  # no known edge: unknown
        for_actions_z = finite((log_duration - expected) / col("sd_log_duration_given_actions"), -z_clip, z_clip)
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
        out["length_for_actions_excess"] = beyond(surprise(np.clip(for_actions_z, 0.0, None)), noise)
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

def session_jitter(copy: int) -> Any:
    """Copy ``copy``'s session lengths, each session moved by its own few per cent and up to
    2 s (the same for all its events, from a hash of its new id; copy 0 is D as generated).

    Without it every copy repeats D's sessions exactly, so the enlarged day would hold
    each feature vector ``copies`` times, which no real day does; the forest, which walks
    each distinct feature vector once, would then look about ``copies`` times faster than
    on real data. Jittered, a copy's events repeat only within their own session (events
    of one type in one hour of a session share every feature), as D's do.
    """
    import polars as pl

    if copy == 0:
        return pl.col("session_duration_sec")
    u = pl.col("session_id").hash(seed=copy) % 1_000_003 / 1_000_003.0
    v = pl.col("session_id").hash(seed=copy + 7919) % 1_000_003 / 1_000_003.0
    return (pl.col("session_duration_sec") * (0.97 + 0.06 * u) + 2.0 * v).alias("session_duration_sec")


def enlarge_day(data_dir: Path, day: date, target: int) -> int:
    """Replace D's events by ~target events: D's own rows repeated under new event and
    session ids, each copy's session lengths jittered (``session_jitter``)."""
    import polars as pl

    from uba import io
    from uba.ingest.files import ingest_frame
    from uba.settings import load_settings

    folder = io.partition_dir(data_dir, io.EVENTS, day)
    original = pl.read_parquet(io.partition_files(data_dir, io.EVENTS, day))
    shutil.rmtree(folder)  # and its checksum records, or the day reads as damaged
    shutil.rmtree(Path(data_dir) / io.CHECKSUMS / io.EVENTS / folder.name, ignore_errors=True)
    copies = max(1, round(target / original.height))
    big = pl.concat([
        original.with_columns(
            (pl.col("event_id") + f"-r{i}").alias("event_id"),
            (pl.col("session_id") + f"-r{i}").alias("session_id"),
        ).with_columns(session_jitter(i)) for i in range(copies)
    ])
    settings = load_settings(overrides={"paths": {"data_dir": data_dir}}, env={})
    ingest_frame(big, data_dir, settings, source=f"benchmark enlarged {day}")
    return big.height


def fit_reference_model(work: Path, data_dir: Path, model_dir: Path, train_end: date) -> None:
    """scikit-learn twin of the bundle: same settings, fitted on a sample of the training features."""
    from sklearn.ensemble import IsolationForest
    from sklearn.preprocessing import StandardScaler

    from uba.features.pipeline import feature_matrix, window_features
    from uba.model.bundle import load_bundle
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


# --- setup ----------------------------------------------------------------------------------

@dataclass
class Dataset:
    work: Path
    day: date
    data_dir: Path
    model_dir: Path
    setup: dict[str, float]


def count_events(data_dir: Path, day: date) -> int:
    """Rows of day D from the Parquet footers."""
    import pyarrow.parquet as pq

    folder = data_dir / "events" / f"event_date={day}"
    return sum(pq.ParquetFile(part).metadata.num_rows for part in sorted(folder.glob("*.parquet")))


def prepare(args: argparse.Namespace, day: date, *, reference: bool = True, seed: bool = True,
            enlarge: dict[date, int] | None = None) -> Dataset:
    """Generate, enlarge the scored day(s), train on the 21 days before ``day``, fit the
    baselines' models; what --work already holds is kept with --reuse. ``enlarge`` maps
    each day to enlarge to its target event count (default: ``day`` to --day-events); days
    after ``day`` are generated too (driver_memory.py scores several large days)."""
    work = args.work
    data_dir, model_dir = work / "data", work / "models"
    train_end = day - timedelta(days=1)
    enlarge = enlarge or {day: args.day_events}
    last = max(enlarge)
    setup: dict[str, float] = {}
    if not args.reuse:
        shutil.rmtree(work, ignore_errors=True)
    if not (data_dir / "events").is_dir():
        setup["generate"] = _run([str(UBA), "generate", "--out", str(data_dir), "--users", str(args.users),
                                  "--days", str(args.history_days + 1 + (last - day).days),
                                  "--start", args.start.isoformat(), "--seed", str(args.seed)], "generate")
        began = time.perf_counter()
        for target_day, target in sorted(enlarge.items()):
            enlarge_day(data_dir, target_day, target)
        setup["enlarge " + ", ".join(str(d) for d in sorted(enlarge))] = time.perf_counter() - began
    if not (model_dir / "LATEST").is_file():
        setup["train"] = _run([str(UBA), "train", "--data-dir", str(data_dir), "--model-dir", str(model_dir),
                               "--end-date", train_end.isoformat(), "--window-days", str(TRAIN_WINDOW_DAYS)],
                              "train")
    if reference and not (work / "reference-model.pkl").is_file():
        began = time.perf_counter()
        fit_reference_model(work, data_dir, model_dir, train_end)
        setup["reference fit"] = time.perf_counter() - began
    if seed and not (work / "seed-model.pkl").is_file():
        setup["seed-style fit"] = _run(
            [sys.executable, str(SEED_SCRIPT), "--fit", "--data-dir", str(data_dir), "--date", day.isoformat(),
             "--model", str(work / "seed-model.pkl"), "--train-days", str(TRAIN_WINDOW_DAYS)], "seed-style fit")
    return Dataset(work, day, data_dir, model_dir, setup)


def uba_score_cmd(data: Dataset, day: date, output_dir: Path, *extra: str) -> list[str]:
    return [str(UBA), "score", "--date", day.isoformat(), "--data-dir", str(data.data_dir),
            "--model-dir", str(data.model_dir), "--output-dir", str(output_dir), *extra]


def contenders(data: Dataset, keys: list[str], cluster: Cluster | None) -> list[Contender]:
    local_env = {**os.environ}
    local_env.pop("RAY_ADDRESS", None)
    joined_env = cluster_env()
    work, day = data.work, data.day
    made: dict[str, Contender] = {}
    for key in keys:
        out = work / f"out-{key}"
        if key == "embedded":
            made[key] = Contender(key, uba_score_cmd(data, day, out), local_env, out)
        elif key == "embedded-ray":
            made[key] = Contender(key, uba_score_cmd(data, day, out),
                                  {**local_env, "UBA_RAY__MIN_ROWS_FOR_RAY": "0"}, out)
        elif key in CLUSTER_KEYS:
            workers = {"cluster-w1": ["--workers", "1"], "cluster-w2": ["--workers", "2"]}.get(key, [])
            assert cluster is not None
            made[key] = Contender(key, uba_score_cmd(data, day, out, "--ray-address", cluster.address, *workers),
                                  joined_env, out, extra_roots=(cluster.head_pid,))
        elif key == "in-process":
            made[key] = Contender(key, uba_score_cmd(data, day, out, "--in-process"), local_env, out)
        elif key == "reference":
            made[key] = Contender(key, [sys.executable, str(Path(__file__).resolve()), "--reference-run",
                                        "--work", str(work), "--date", day.isoformat()], local_env)
        elif key == "seed":
            scores = work / "seed" / "scores.parquet"
            made[key] = Contender(key, [sys.executable, str(SEED_SCRIPT), "--run", "--data-dir", str(data.data_dir),
                                        "--date", day.isoformat(), "--model", str(work / "seed-model.pkl"),
                                        "--out", str(scores), "--lookback-days", str(LOOKBACK_DAYS)],
                                  local_env, summary=scores.with_suffix(".json"))
    return [made[key] for key in LABELS if key in made]


def parse_only(values: list[str] | None) -> list[str]:
    if not values:
        return list(LABELS)
    keys = [k.strip() for v in values for k in v.split(",") if k.strip()]
    unknown = [k for k in keys if k not in LABELS]
    if unknown:
        raise SystemExit(f"--only: unknown {unknown}; choose from {', '.join(LABELS)}")
    return [k for k in LABELS if k in keys]


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
                        help="keep what --work already holds (data, model, baselines' models); build the rest")
    parser.add_argument("--rounds", "--repeat", dest="rounds", type=int, default=3,
                        help="interleaved rounds of all selected runs (median reported, every round listed)")
    parser.add_argument("--only", action="append", metavar="LABELS",
                        help=f"comma-separated subset of: {', '.join(LABELS)} (default: all)")
    parser.add_argument("--cluster-cpus", type=int, default=2, help="--num-cpus of the warm cluster's head")
    parser.add_argument("--ray-port", type=int, default=26379,
                        help="first port tried for the warm cluster's GCS (the next three: client, "
                             "dashboard, dashboard agent)")
    parser.add_argument("--reference-run", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--date", type=date.fromisoformat, help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    if args.reference_run:
        reference_run(args.work, args.date, args.work / "reference" / "scores.parquet")
        return
    keys = parse_only(args.only)
    with terminate_as_exit():
        report = benchmark(args, keys)
    print(report)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(report)
    if not args.keep:
        shutil.rmtree(args.work, ignore_errors=True)


def benchmark(args: argparse.Namespace, keys: list[str]) -> str:
    host = machine()
    day = args.start + timedelta(days=args.history_days)
    data = prepare(args, day, reference="reference" in keys, seed="seed" in keys)
    events = count_events(data.data_dir, day)
    print(f"day {day}: {events:,} events; setup " + ", ".join(f"{k} {v:.0f} s" for k, v in data.setup.items()),
          flush=True)
    runs: dict[str, list[Run]] = {key: [] for key in keys}
    warmup: dict[str, float] = {}
    with contextlib.ExitStack() as stack:
        cluster = None
        if any(k in CLUSTER_KEYS for k in keys):
            began = time.perf_counter()
            cluster = stack.enter_context(warm_cluster(args.work / "ray-head.log", args.cluster_cpus,
                                                       args.ray_port))
            warmup["ray start --head (until its port answers)"] = time.perf_counter() - began
        chosen = contenders(data, keys, cluster)
        first_uba = next((c for c in chosen if c.key in CLUSTER_KEYS),
                         next((c for c in chosen if c.key in UBA_KEYS), None))
        if first_uba is not None:  # untimed: warms the cluster and computes the days' aggregates once
            warm = run_contender(first_uba, day, events, 0)
            warmup[f"untimed warm-up run ({first_uba.key})"] = warm.wall
            print(describe(warm), flush=True)
        for round_no in range(1, args.rounds + 1):  # interleaved, so load changes hit every contender
            for contender in chosen:
                run = run_contender(contender, day, events, round_no)
                runs[contender.key].append(run)
                print(describe(run), flush=True)
    agreement = feature_agreement(data.data_dir, day) if "reference" in keys else None
    return render(args, host, day, events, data.setup, warmup, cluster.address if cluster else None, runs,
                  agreement)


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


def median_run(results: list[Run], warm: bool = False) -> Run:
    ordered = sorted(results, key=lambda r: r.warm if warm else r.wall)
    return ordered[(len(ordered) - 1) // 2]


def _load(values: tuple[float, float, float]) -> str:
    return "/".join(f"{v:.2f}" for v in values)


# (name, numerator, numerator without start-up?, denominator, target); "cluster" falls back
# to cluster-w2 when only that one ran
TARGETS = [
    ("warm cluster vs seed-style script", "cluster", True, "seed", 4.0),
    ("warm cluster vs pandas reference", "cluster", True, "reference", 3.0),
    ("embedded default vs seed-style script (start-up included)", "embedded", False, "seed", 1.5),
    ("2 workers vs 1 worker (warm cluster)", "cluster-w2", True, "cluster-w1", 1.7),
]


def target_rows(runs: dict[str, list[Run]]) -> list[str]:
    rows = []
    for name, top, top_warm, bottom, target in TARGETS:
        if top == "cluster" and not runs.get(top):
            top = "cluster-w2"
        if not runs.get(top) or not runs.get(bottom):
            rows.append(f"| {name} | not run | | | >= {target}x | |")
            continue
        bottom_warm = bottom in UBA_KEYS and top_warm  # worker scaling: both without start-up
        med_top, med_bottom = median_run(runs[top], top_warm), median_run(runs[bottom], bottom_warm)
        ratio = med_top.rate(top_warm) / med_bottom.rate(bottom_warm)
        as_is = median_run(runs[top]).rate() / median_run(runs[bottom]).rate()
        paired = {r.round: r for r in runs[bottom]}
        per_round = [a.rate(top_warm) / paired[a.round].rate(bottom_warm) for a in runs[top] if a.round in paired]
        rows.append(f"| {name} | **{ratio:.2f}x** | {as_is:.2f}x | "
                    f"{', '.join(f'{r:.2f}' for r in per_round)} | >= {target}x | "
                    f"{'yes' if ratio >= target else 'no'} |")
    return rows


def render(args: argparse.Namespace, host: dict[str, str], day: date, events: int, setup: dict[str, float],
           warmup: dict[str, float], address: str | None, runs: dict[str, list[Run]],
           agreement: dict[str, float] | None) -> str:
    runs = {k: v for k, v in runs.items() if v}
    medians = {key: median_run(results) for key, results in runs.items()}
    command = " ".join([".venv/bin/python", "benchmarks/score_throughput.py", *sys.argv[1:]])
    lines = [
        "# `score --date` throughput: uba (embedded Ray, warm cluster, in-process) vs single-process "
        "pandas + scikit-learn jobs",
        "",
        f"Recorded {datetime.now(UTC):%Y-%m-%d %H:%M} UTC by `{command}`.",
        "",
        "| machine | |", "|---|---|",
        *(f"| {k} | {v} |" for k, v in host.items()),
        "",
        f"Data: {args.users:,} users, {args.history_days} days of history at the generator's normal "
        f"density, and the scored day {day} enlarged to **{events:,} events** (D's own events repeated "
        f"under new ids, stored through the ingest writer). Model: `uba-batch train` on the "
        f"{TRAIN_WINDOW_DAYS} days before D.",
        "",
        "Setup (not part of the comparison): "
        + (", ".join(f"{k} {v:.0f} s" for k, v in setup.items()) or "reused from an earlier run")
        + (". Before the rounds: " + ", ".join(f"{k} {v:.1f} s" for k, v in warmup.items()) if warmup else "")
        + ".",
    ]
    if address:
        lines += ["", f"Warm cluster: `ray start --head --block --node-ip-address=127.0.0.1 "
                      f"--num-cpus={args.cluster_cpus} --include-dashboard=false` at {address}, up for all "
                      "rounds (also while the other runs ran), joined with `--ray-address` and "
                      "RAY_AUTH_MODE=token."]
    lines += [
        "",
        f"Each run in its own process, {args.rounds} interleaved round(s). Medians: the run with the "
        "median wall time. **Without start-up** = the job's own `duration_sec` (manifest) minus its "
        "`ray_init` stage, i.e. without interpreter start, imports and Ray start or connect; the pandas "
        "scripts have no such stage and are always timed as whole processes (imports included). "
        "Load average = 1/5/15-minute `os.getloadavg()` just before the run, then the 1-minute one "
        "just after.",
        "",
        "| run | wall s (process) | ray_init s | wall s without start-up | events/s (process) "
        "| events/s without start-up | peak PSS MiB (process tree) | peak RSS MiB (main process) "
        "| load before -> after |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for key, run in medians.items():
        m = run.measured
        pss = max(r.measured.peak_tree_pss_mib for r in runs[key])
        rss = max(r.measured.peak_hwm_mib for r in runs[key])
        uba = run.manifest is not None
        lines.append(f"| {LABELS[key]} | {run.wall:.1f} | {f'{run.ray_init:.1f}' if uba else '-'} | "
                     f"{f'{run.warm:.1f}' if uba else '-'} | {run.rate():,.0f} | "
                     f"{f'{run.rate(True):,.0f}' if uba else '-'} | {pss:,.0f} | {rss:,.0f} | "
                     f"{_load(m.load_before)} -> {m.load_after[0]:.2f} |")
    lines += [
        "",
        "The batch speed targets, as ratios of events/s (ratio of the medians; \"as is\" = both sides "
        "timed as whole processes; per round = the two runs of the same round):",
        "",
        "| target | ratio | as is | per round | target | met |",
        "|---|---:|---:|---|---:|---|",
        *target_rows(runs),
        "",
        "Every round:",
        "",
        "| round | run | wall s | without start-up s | events/s | peak PSS MiB | peak RSS MiB (main) "
        "| load before -> after |",
        "|---:|---|---:|---:|---:|---:|---:|---|",
    ]
    for round_no in range(1, args.rounds + 1):
        for key, results in runs.items():
            for r in results:
                if r.round == round_no:
                    m = r.measured
                    lines.append(f"| {round_no} | {LABELS[key]} | {r.wall:.1f} | "
                                 f"{f'{r.warm:.1f}' if r.manifest is not None else '-'} | {r.rate():,.0f} | "
                                 f"{m.peak_tree_pss_mib:,.0f} | {m.peak_hwm_mib:,.0f} | "
                                 f"{_load(m.load_before)} -> {m.load_after[0]:.2f} |")
    staged = {key: run for key, run in medians.items() if run.stages}
    if staged:
        stages = sorted({s for run in staged.values() for s in run.stages},
                        key=lambda s: -max(run.stages.get(s, 0.0) for run in staged.values()))
        lines += ["", "Stage timings of the median runs (seconds; uba: `timings_sec` of the manifest, "
                      "seed-style: its own summary; empty = no such stage; `shards Σ x` = step x of the manifest's "
                      "shard records summed over the shards, busy time rather than wall):", "",
                  "| stage | " + " | ".join(LABELS[k] for k in staged) + " |",
                  "|---|" + "---:|" * len(staged)]
        for stage in stages:
            values = [f"{run.stages[stage]:.2f}" if stage in run.stages else "" for run in staged.values()]
            lines.append(f"| {stage} | " + " | ".join(values) + " |")
        steps = sorted({s for run in staged.values() for s in run.shard_steps})
        for step in steps:  # busy seconds inside the shards, summed over shards (not wall)
            values = [f"{run.shard_steps[step]:.2f}" if step in run.shard_steps else "" for run in staged.values()]
            lines.append(f"| {step} | " + " | ".join(values) + " |")
    lines += ["", "How the uba runs ran (manifest `execution`, median runs):", ""]
    for key, run in medians.items():
        if run.manifest is None:
            continue
        execution = run.manifest.get("execution") or {}
        scalars = ", ".join(f"{k} {v}" for k, v in execution.items() if isinstance(v, str | int | float | bool)
                            or v is None)
        shards = shard_summary(run.manifest)
        counts = run.manifest.get("counts") or {}
        conservation = (run.manifest.get("row_conservation") or {}).get("ok")
        lines.append(f"- {LABELS[key]}: {scalars}" + (f"; {shards}" if shards else "")
                     + f"; {counts.get('flagged_rows', '?'):,} events flagged; row conservation "
                     + ("ok" if conservation else "FAILED" if conservation is False else "?") + ".")
    if agreement is not None:
        lines += ["", f"Same features: largest |reference - uba| over {FEATURE_CHECK_ROWS:,} events of D, "
                      "per feature: " + ", ".join(f"{k} {v:.1e}" for k, v in agreement.items()) + "."]
    lines += [
        "",
        "What each side does. **uba** (`uba-batch score --date`): the whole nightly job as the "
        "product runs it (baselines as of D from the daily aggregates, which the untimed warm-up "
        "run computed once for the lookback and D, features through the shared feature module, "
        "the forest, thresholds, per-user cuts, suppression, reasons, Parquet parts, atomic "
        "publish, manifest, baseline snapshot for the API); stage names are the manifest's. "
        "**Pandas reference** (one process): pandas reads D's events and the baseline table as "
        "of D (it does not rebuild baselines), computes the product's event features with "
        "pandas/numpy, scikit-learn StandardScaler + IsolationForest.score_samples (same "
        "settings, fitted on a sample of the same training features), thresholds, and writes "
        "one Parquet of scores without reasons. **Seed-style script** (`benchmarks/seed_style_score.py "
        "--run`, one process, nothing from uba): pandas reads the raw events of the 28 days before "
        "D and of D from the contracted layout, rebuilds every user's mean and spread of session "
        "duration, mean actions and mean hour with a groupby, merges them onto D's events, adds "
        "the deviations, scores with scikit-learn StandardScaler + IsolationForest (200 trees, "
        "contamination 0.02, fitted on the seed features of the 21 training days, not timed), "
        "flags at the fitted threshold and writes one Parquet of scores. Peak PSS is summed over "
        "the process and all its descendants (Ray's GCS, raylet, workers and shared-memory "
        "object store when the job starts them; for the warm-cluster runs the cluster's processes "
        "are added, idle workers of earlier jobs included), sampled every 0.1 s; peak RSS is the main process's own "
        "VmHWM. The machine is shared with other jobs: wall times vary with its load (see the "
        "load averages), memory much less.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
