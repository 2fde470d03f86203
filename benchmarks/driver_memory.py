"""Does the `uba-batch score --date` driver's memory stay flat as the day grows?

The driver memory target: on 0.5 M, 2 M and 4 M event days the driver process's peak RSS
grows less than 1.3x from the smallest day to the largest. The driver is the
`uba-batch` process itself: Ray's GCS, raylet and workers (children of the driver on
the embedded Ray, or the cluster's processes) are not counted; the Ray runs' whole
process trees are reported beside it for context.

What it does (work files under --work, default <tmp>/uba-driver-memory, outside the
repository; removed at the end unless --keep):

1. `uba-batch generate` --users users x (--history-days + sizes) days. The days after
   the history, D1 < D2 < D3, are enlarged to the --sizes (smallest first) exactly like
   `score_throughput.py` does it (the day's own events repeated under new ids, stored
   through the ingest writer), so every scored day has 28 days of history before it.
2. `uba-batch train` on the 21 days before D1.
3. If `cluster` is among --modes, a warm single-node Ray cluster on 127.0.0.1
   (`ray start --head --block`, own process group, stopped by group id at the end, also
   on error or Ctrl-C). Each day gets one untimed run first (it computes the day's
   aggregates once, as the nightly job does, and warms the cluster).
4. --rounds rounds; in each, every day is scored in every mode, each run its own
   process. The driver's peak RSS is its VmHWM (/proc/<pid>/status), read by the
   driver itself at exit (an atexit hook in a tiny launcher that then calls the
   `uba-batch` entry point, so the job is unchanged) and sampled every 0.1 s by this
   script as a fallback; the larger of the two is reported. The sampled peaks of its
   private (RssAnon) and shared-memory (RssShmem, e.g. Ray's object store mapped into
   the driver) parts are reported too.

    .venv/bin/python benchmarks/driver_memory.py --output benchmarks/results/driver_memory.md
    .venv/bin/python benchmarks/driver_memory.py --users 2000 --sizes 50000,200000,400000   # quick check
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import score_throughput as st  # benchmarks/score_throughput.py, beside this script

MODES = {"cluster": "warm cluster (`--ray-address`)",
         "embedded": "embedded Ray (`UBA_RAY__MIN_ROWS_FOR_RAY=0`)",
         "default": "the default (no address: in-process threads below `ray.min_rows_for_ray`)",
         "in-process": "`--in-process`"}
TARGET = 1.3
HWM_ENV = "UBA_BENCH_HWM_FILE"
# Runs the `uba-batch` console script in this very process after registering an atexit
# hook that writes the process's own /proc/self/status memory lines to $UBA_BENCH_HWM_FILE.
# Registered first, so it runs last (after Ray's own atexit shutdown).
LAUNCHER = """
import atexit, os, sys
def _report():
    with open('/proc/self/status') as src, open(os.environ['UBA_BENCH_HWM_FILE'], 'w') as dst:
        dst.writelines(line for line in src if line.startswith(('VmHWM', 'VmRSS', 'RssAnon', 'RssShmem')))
atexit.register(_report)
from importlib.metadata import entry_points
(entry,) = entry_points(group='console_scripts', name='uba-batch')
sys.argv[0] = 'uba-batch'
sys.exit(entry.load()())
"""


@dataclass
class Result:
    size: int
    day: date
    mode: str
    round: int
    events: int
    measured: st.Measured
    exit_status: dict[str, int] = field(default_factory=dict)  # KiB, from the atexit hook
    manifest: dict[str, Any] | None = None

    @property
    def driver_peak_mib(self) -> float:
        """The driver's own VmHWM: the atexit reading, or the last sample when the hook did not run."""
        return max(self.exit_status.get("VmHWM", 0) / 1024, self.measured.peak_hwm_mib)

    @property
    def peak_text(self) -> str:
        """The peak in MiB, marked * when the exit hook did not report (sampled value only)."""
        return f"{self.driver_peak_mib:,.0f}" + ("" if "VmHWM" in self.exit_status else "*")


def _read_status(path: Path) -> dict[str, int]:
    values: dict[str, int] = {}
    with contextlib.suppress(OSError):
        for line in path.read_text().splitlines():
            name, _, rest = line.partition(":")
            with contextlib.suppress(ValueError, IndexError):
                values[name] = int(rest.split()[0])
    return values


def score_run(data: st.Dataset, day: date, mode: str, cluster: st.Cluster | None, out: Path,
              round_no: int, size: int, events: int) -> Result:
    extra = {"cluster": ["--ray-address", cluster.address] if cluster else [],
             "embedded": [], "default": [], "in-process": ["--in-process"]}[mode]
    uba_cmd = st.uba_score_cmd(data, day, out, *extra)
    hwm_file = data.work / f"driver-status-{os.getpid()}.txt"
    hwm_file.unlink(missing_ok=True)
    env = st.cluster_env() if mode == "cluster" else {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env[HWM_ENV] = str(hwm_file)
    if mode == "embedded":  # the embedded Ray whatever the day's size
        env["UBA_RAY__MIN_ROWS_FOR_RAY"] = "0"
    shutil.rmtree(out, ignore_errors=True)
    measured = st.measure([sys.executable, "-c", LAUNCHER, *uba_cmd[1:]], env,
                          extra_roots=(cluster.head_pid,) if mode == "cluster" and cluster else ())
    if measured.returncode != 0:
        raise SystemExit(f"score {day} ({mode}) failed (exit {measured.returncode}):\n{measured.output}")
    result = Result(size, day, mode, round_no, events, measured, _read_status(hwm_file),
                    st.read_manifest(out, day))
    hwm_file.unlink(missing_ok=True)
    return result


def describe(r: Result) -> str:
    m = r.measured
    shards = st.shard_summary(r.manifest)
    return (f"round {r.round} {r.events:,} events {r.mode}: driver peak RSS {r.peak_text} MiB "
            f"(anon {m.peak_anon_mib:,.0f}, shmem {m.peak_shmem_mib:,.0f}), tree PSS {m.peak_tree_pss_mib:,.0f} "
            f"MiB, wall {m.wall_s:.1f} s, load {m.load_before[0]:.2f} -> {m.load_after[0]:.2f}"
            + (f"; {shards}" if shards else ""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--history-days", type=int, default=28)
    parser.add_argument("--sizes", default="500000,2000000,4000000",
                        help="comma-separated event counts of the scored days (default: 0.5 M, 2 M, 4 M)")
    parser.add_argument("--modes", default="cluster,embedded",
                        help=f"comma-separated subset of {', '.join(MODES)} (default: cluster,embedded)")
    parser.add_argument("--rounds", type=int, default=1, help="rounds over all days and modes (largest peak kept)")
    parser.add_argument("--start", type=date.fromisoformat, default=date(2026, 2, 1))
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "uba-driver-memory")
    parser.add_argument("--keep", action="store_true", help="keep --work for a later --reuse")
    parser.add_argument("--reuse", action="store_true", help="keep what --work already holds (data, model)")
    parser.add_argument("--output", type=Path, default=None, help="Markdown file for the results")
    parser.add_argument("--cluster-cpus", type=int, default=2)
    parser.add_argument("--ray-port", type=int, default=26379)
    args = parser.parse_args()
    sizes = sorted(int(s.replace("_", "")) for s in args.sizes.split(",") if s.strip())
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if len(sizes) < 2 or [m for m in modes if m not in MODES] or not modes:
        raise SystemExit(f"--sizes needs two or more counts; --modes is a subset of {', '.join(MODES)}")
    args.day_events = sizes[0]
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    with st.terminate_as_exit():
        report = benchmark(args, sizes, modes)
    print(report)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(report)
    if not args.keep:
        shutil.rmtree(args.work, ignore_errors=True)


def benchmark(args: argparse.Namespace, sizes: list[int], modes: list[str]) -> str:
    host = st.machine()
    first = args.start + timedelta(days=args.history_days)
    days = {size: first + timedelta(days=i) for i, size in enumerate(sizes)}
    data = st.prepare(args, first, reference=False, seed=False, enlarge={d: s for s, d in days.items()})
    events = {size: st.count_events(data.data_dir, day) for size, day in days.items()}
    print(", ".join(f"{day}: {events[size]:,} events" for size, day in days.items())
          + "; setup " + ", ".join(f"{k} {v:.0f} s" for k, v in data.setup.items()), flush=True)
    results: list[Result] = []
    warmup: dict[str, float] = {}
    with contextlib.ExitStack() as stack:
        cluster = None
        if "cluster" in modes:
            began = time.perf_counter()
            cluster = stack.enter_context(st.warm_cluster(args.work / "ray-head.log", args.cluster_cpus,
                                                          args.ray_port))
            warmup["ray start --head"] = time.perf_counter() - began
        for size, day in days.items():  # untimed: the day's aggregates once, and a warm cluster
            warm = score_run(data, day, modes[0], cluster, args.work / "out-warmup", 0, size, events[size])
            warmup[f"warm-up {day} ({modes[0]})"] = warm.measured.wall_s
            print(describe(warm), flush=True)
        for round_no in range(1, args.rounds + 1):
            for size, day in days.items():
                for mode in modes:
                    result = score_run(data, day, mode, cluster, args.work / f"out-{mode}", round_no, size,
                                       events[size])
                    results.append(result)
                    print(describe(result), flush=True)
    return render(args, host, data.setup, warmup, sizes, modes, events, results)


def render(args: argparse.Namespace, host: dict[str, str], setup: dict[str, float], warmup: dict[str, float],
           sizes: list[int], modes: list[str], events: dict[int, int], results: list[Result]) -> str:
    command = " ".join([".venv/bin/python", "benchmarks/driver_memory.py", *sys.argv[1:]])

    def peak(size: int, mode: str) -> Result:
        return max((r for r in results if r.size == size and r.mode == mode), key=lambda r: r.driver_peak_mib)

    lines = [
        "# `score --date` driver memory as the day grows",
        "",
        f"Recorded {datetime.now(UTC):%Y-%m-%d %H:%M} UTC by `{command}`.",
        "",
        "| machine | |", "|---|---|", *(f"| {k} | {v} |" for k, v in host.items()),
        "",
        f"Data: {args.users:,} users, {args.history_days} days of history before each scored day, the "
        "scored days enlarged to " + ", ".join(f"{events[s]:,}" for s in sizes) + " events (the day's own "
        "events repeated under new ids, stored through the ingest writer). Setup (not measured): "
        + ", ".join(f"{k} {v:.0f} s" for k, v in {**setup, **warmup}.items()) + ".",
        "",
        f"Each run its own process, {args.rounds} round(s); the largest peak per day and mode is kept. "
        "**Driver peak RSS** = VmHWM of the `uba-batch` process alone (read by the process at exit, "
        "or, marked *, the last 0.1 s sample when the process exited without running atexit); anon / shmem = its largest sampled RssAnon / RssShmem; tree PSS "
        "= the driver and its descendants (and, for the warm cluster, the cluster's processes).",
        "",
        "| mode | events | driver peak RSS MiB | anon MiB | shmem MiB | tree PSS MiB | wall s | events/s "
        "| load before -> after |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for mode in modes:
        for size in sizes:
            r = peak(size, mode)
            m = r.measured
            lines.append(f"| {MODES[mode]} | {r.events:,} | {r.peak_text} | {m.peak_anon_mib:,.0f} | "
                         f"{m.peak_shmem_mib:,.0f} | {m.peak_tree_pss_mib:,.0f} | {m.wall_s:.1f} | "
                         f"{r.events / m.wall_s:,.0f} | {'/'.join(f'{v:.2f}' for v in m.load_before)} -> "
                         f"{m.load_after[0]:.2f} |")
    lines += ["", f"Target: driver peak RSS on the largest day < {TARGET}x the smallest "
                  f"({events[sizes[-1]] / events[sizes[0]]:.1f}x the events).", "",
              "| mode | smallest MiB | largest MiB | largest / smallest | met |", "|---|---:|---:|---:|---|"]
    for mode in modes:
        small, large = peak(sizes[0], mode).driver_peak_mib, peak(sizes[-1], mode).driver_peak_mib
        ratio = large / small
        lines.append(f"| {MODES[mode]} | {small:,.0f} | {large:,.0f} | **{ratio:.2f}x** | "
                     f"{'yes' if ratio < TARGET else 'no'} |")
    lines += ["", "Stage timings and execution of the largest day's runs (manifest):", ""]
    for mode in modes:
        r = peak(sizes[-1], mode)
        stages = {**st.flat_seconds((r.manifest or {}).get("timings_sec")), **st.shard_step_seconds(r.manifest)}
        shards = st.shard_summary(r.manifest)
        execution = (r.manifest or {}).get("execution") or {}
        scalars = ", ".join(f"{k} {v}" for k, v in execution.items()
                            if isinstance(v, str | int | float | bool) or v is None)
        lines.append(f"- {MODES[mode]}: " + ", ".join(f"{k} {v:.2f}" for k, v in
                                                     sorted(stages.items(), key=lambda kv: -kv[1]))
                     + f". Execution: {scalars}" + (f"; {shards}" if shards else "") + ".")
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
