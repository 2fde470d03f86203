"""POST /predict latency and throughput on 127.0.0.1: compact forest vs scikit-learn.

What it does, end to end, with the product's own code:

1. generates a seed-sized data set (``--users`` users, ``--days`` days) into a temporary
   directory, trains a bundle with ``uba.training.train_model`` (default settings: 200
   trees, p98 threshold) and saves the exact training matrix (``.npy``);
2. starts the real server (``uvicorn uba.api.app:app``, one worker, no access log) twice:
   once with the production scorer (``api.scorer: compact``) and once with
   ``UBA_API__SCORER=sklearn``, where the server refits scikit-learn's IsolationForest on
   that training matrix with the bundle's seed and parameters and refuses to start unless
   it scores exactly like the bundle (1e-9): both servers evaluate the same forest;
3. drives ``/predict`` with ``wrk`` (Debian package; a Lua script posts real events of
   the day after training, rotating through a few hundred bodies) for ``--duration``
   seconds per concurrency level, and reads p50/p99 latency and requests/s;
4. also times the scorer call alone (one row, in process) for both, and writes
   ``benchmarks/results/api_latency.md`` with the machine description and the command.

Run: ``.venv/bin/python benchmarks/api_latency.py`` (needs ``wrk``: ``apt-get install -y wrk``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import httpx
import numpy as np

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "api_latency.md"
START = date(2026, 3, 2)
BODIES = 400

LUA = """
local bodies = {}
local f = io.open("%(bodies)s", "r")
for line in f:lines() do bodies[#bodies + 1] = line end
f:close()
local i = 0
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
request = function()
  i = i %% #bodies + 1
  return wrk.format(nil, "/predict", nil, bodies[i])
end
"""


@dataclass(frozen=True)
class Run:
    scorer: str
    connections: int
    requests_per_s: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    requests: int
    errors: str
    non_2xx: int


def machine() -> dict[str, str]:
    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem_kb = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                  if line.startswith("MemTotal"))
    return {
        "cpu": cpu, "nproc": str(os.cpu_count()), "ram": f"{mem_kb / 1024 / 1024:.1f} GiB",
        "python": platform.python_version(), "kernel": platform.release(),
        "loadavg_at_start": " ".join(Path("/proc/loadavg").read_text().split()[:3]),
    }


def build_world(root: Path, users: int, days: int) -> tuple[dict[str, str], Path, str, date]:
    """Generate, train (the real `train`), save the training matrix; returns env, matrix, version, day."""
    from uba.generate import GenerationOptions
    from uba.generate.store import write_generated
    from uba.pipeline import feature_matrix, window_features
    from uba.settings import load_settings
    from uba.training import train_model

    env = {**{k: v for k, v in os.environ.items() if not k.startswith("UBA_")},
           "UBA_DATA_DIR": str(root / "data"), "UBA_MODEL_DIR": str(root / "models"),
           "UBA_OUTPUT_DIR": str(root / "output")}
    settings = load_settings(env=env)
    write_generated(GenerationOptions(users=users, days=days + 1, start=START, seed=5),
                    root / "data", settings)
    end = START + timedelta(days=days - 1)
    result = train_model(settings, end, days)
    train_days = [START + timedelta(days=i) for i in range(days)]
    matrix = feature_matrix(window_features(root / "data", train_days, settings).collect())
    path = root / "train.npy"
    np.save(path, matrix)
    return env, path, result.version, end + timedelta(days=1)


def request_bodies(root: Path, day: date, out: Path) -> int:
    """Real events of the day after training, one JSON body per line, as clients post them."""
    from uba import io

    events = io.scan_events(root / "data", day).head(BODIES).collect()
    with out.open("w") as handle:
        for row in events.iter_rows(named=True):
            body = {k: row[k] for k in ("event_id", "user_id", "event_type", "session_duration_sec",
                                        "events_in_session", "device_type")}
            body["timestamp"] = row["timestamp"].isoformat()
            handle.write(json.dumps(body) + "\n")
    return events.height


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def server(env: dict[str, str], log: Path):  # type: ignore[no-untyped-def]
    port = free_port()
    cmd = [sys.executable, "-m", "uvicorn", "uba.api.app:app", "--host", "127.0.0.1",
           "--port", str(port), "--no-access-log", "--log-level", "warning"]
    with log.open("wb") as out:
        process = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"server exited:\n{log.read_text()[-3000:]}")
            try:
                ready = httpx.get(url + "/ready", timeout=2)
                if ready.status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        else:
            raise RuntimeError(f"server not ready:\n{log.read_text()[-3000:]}")
        yield url
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _ms(text: str) -> float:
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text).groups()  # type: ignore[union-attr]
    return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]


def parse_wrk(output: str) -> dict[str, Any]:
    pct = dict(re.findall(r"^\s+(50|75|90|99)%\s+(\S+)$", output, flags=re.M))
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))  # type: ignore[union-attr]
    total = int(re.search(r"(\d+) requests in", output).group(1))  # type: ignore[union-attr]
    errors = re.search(r"Socket errors: (.*)", output)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    return {"p50_ms": _ms(pct["50"]), "p90_ms": _ms(pct["90"]), "p99_ms": _ms(pct["99"]),
            "requests_per_s": rps, "requests": total,
            "errors": errors.group(1) if errors else "none",
            "non_2xx": int(non2xx.group(1)) if non2xx else 0}


def drive(url: str, script: Path, connections: int, duration: int) -> dict[str, Any]:
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--latency", "--timeout", "10s",
           "-s", str(script), url + "/predict"]
    result = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return parse_wrk(result.stdout)


def scorer_microbenchmark(env: dict[str, str], matrix: Path, rows: int = 2000) -> dict[str, float]:
    """One-row scoring calls in process: the part of a request the scorer choice changes."""
    from uba.api.sklearn_scorer import sklearn_scorer
    from uba.artifacts import load_bundle

    bundle = load_bundle(Path(env["UBA_MODEL_DIR"]))
    X = np.load(matrix)[:rows]
    sk = sklearn_scorer(bundle, matrix)
    out = {}
    for name, score in (("compact", bundle.detector.anomaly_scores), ("sklearn", sk)):
        times = []
        for i in range(min(rows, 300 if name == "sklearn" else rows)):
            t = time.perf_counter()
            score(X[i : i + 1])
            times.append(time.perf_counter() - t)
        out[name] = statistics.median(times) * 1e3
    return out


def baseline_index_microbenchmark(env: dict[str, str], users: int = 100_000) -> dict[str, float]:
    """Per-request feature time with the indexed snapshot vs joining the whole snapshot.

    The snapshot of the run is blown up to ``users`` users (copies of real rows under new
    ids) to show what the index buys for a large tenant.
    """
    import polars as pl

    from uba import io
    from uba.api.inference import ScoringEvent, events_frame, feature_frame
    from uba.api.state import index_baselines
    from uba.features import POPULATION_USER, attach_baselines, compute_features
    from uba.reasons import explain

    as_of, path = io.latest_baseline_snapshot(Path(env["UBA_DATA_DIR"]))  # type: ignore[misc]
    snapshot = io.read_baseline_snapshot(path)
    people = snapshot.filter(pl.col("user_id") != POPULATION_USER)
    copies = -(-users // people.height)
    big = pl.concat(
        [people.with_columns(pl.col("user_id") + f"-{k}") for k in range(copies)]
        + [snapshot.filter(pl.col("user_id") == POPULATION_USER)], how="vertical",
    )
    index = index_baselines(big, as_of, path)
    user = big["user_id"][big.height // 2]
    events = [ScoringEvent("e1", user, None, "login", 600.0, 12, "desktop", 10, 2, None)]

    def joined() -> None:
        lf = attach_baselines(events_frame(events).lazy(), big.lazy())
        explain(compute_features(lf), 3).collect()

    out = {"users": float(big.height - 1)}
    for name, call in (("indexed", lambda: feature_frame(index, events, 3)), ("full_join", joined)):
        times = []
        for _ in range(40):
            t = time.perf_counter()
            call()
            times.append(time.perf_counter() - t)
        out[name] = statistics.median(times) * 1e3
    return out


def write_results(path: Path, runs: list[Run], info: dict[str, str], micro: dict[str, float],
                  index: dict[str, float], command: str, setup: dict[str, Any]) -> None:
    by = {(r.scorer, r.connections): r for r in runs}
    lines = [
        "# /predict latency: compact forest vs scikit-learn score_samples",
        "",
        f"Recorded {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} by `benchmarks/api_latency.py`.",
        "",
        "Command:",
        "",
        "```",
        command,
        "```",
        "",
        "## Machine",
        "",
        f"- CPU: {info['cpu']}, nproc {info['nproc']}, RAM {info['ram']}",
        f"- Python {info['python']}, Linux {info['kernel']}; load average at start {info['loadavg_at_start']}",
        "- Server, load generator (wrk, 1 thread) and the machine's other work share these cores,",
        "  so absolute numbers are pessimistic; both scorers ran back to back under the same conditions.",
        "",
        "## Setup",
        "",
        f"- Data: {setup['users']} users x {setup['days']} training days ({setup['rows']} training events), "
        f"bundle `{setup['version']}` (200 trees, p98 threshold), baselines as of {setup['as_of']}.",
        f"- Requests: {setup['bodies']} real events of {setup['as_of']} posted in rotation "
        "(timestamp given, hour/day derived), one uvicorn worker, access log off.",
        f"- Each cell: wrk for {setup['duration']} s after a short warm-up; closed loop "
        "(each connection sends its next request when the previous answer arrives).",
        "- `sklearn`: the same server with `UBA_API__SCORER=sklearn`: scikit-learn's IsolationForest "
        "refitted on the bundle's training matrix with its seed, verified equal to the bundle "
        "(1e-9) at startup, scoring with `-score_samples` per request.",
        "",
        "## Results",
        "",
        "| scorer | connections | requests/s | p50 ms | p90 ms | p99 ms | requests | non-2xx | socket errors |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in runs:
        lines.append(f"| {r.scorer} | {r.connections} | {r.requests_per_s:.1f} | {r.p50_ms:.2f} | "
                     f"{r.p90_ms:.2f} | {r.p99_ms:.2f} | {r.requests} | {r.non_2xx} | {r.errors} |")
    lines += ["", "Ratios (sklearn / compact; > 1 means the compact forest is better):", ""]
    for c in sorted({r.connections for r in runs}):
        compact, sk = by.get(("compact", c)), by.get(("sklearn", c))
        if compact and sk:
            lines.append(
                f"- {c} connection(s): p50 latency x{sk.p50_ms / compact.p50_ms:.2f}, "
                f"p99 latency x{sk.p99_ms / compact.p99_ms:.2f}, "
                f"throughput x{compact.requests_per_s / sk.requests_per_s:.2f} (compact / sklearn)"
            )
    lines += [
        "",
        "Scorer call alone, one row, in process (median over calls):",
        "",
        f"- compact forest: {micro['compact']:.3f} ms; scikit-learn score_samples: {micro['sklearn']:.3f} ms "
        f"(x{micro['sklearn'] / micro['compact']:.0f})",
        "",
        f"Features + reasons for one event against a snapshot of {index['users']:,.0f} users (median):",
        "",
        f"- indexed snapshot (the user's row sliced by a dict lookup): {index['indexed']:.2f} ms; "
        f"joining the whole snapshot: {index['full_join']:.2f} ms",
        "",
        "## Reading the numbers",
        "",
        "- A request's time is HTTP + validation + the feature/reason expressions (Polars, the same",
        "  code as the batch job) + the forest. The forest is the only part the scorer switch changes.",
        "- Single-event requests that arrive while another batch is being scored are coalesced into one",
        "  frame (uba/api/batcher.py), in both modes: under concurrency the per-call costs of the feature",
        "  code and of scikit-learn's per-tree loop are shared by the coalesced events.",
        "",
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=500)
    parser.add_argument("--days", type=int, default=21)
    parser.add_argument("--duration", type=int, default=60, help="seconds of load per cell")
    parser.add_argument("--connections", default="1,16", help="comma-separated concurrency levels")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--keep", action="store_true", help="keep the temporary data directory")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk not found: apt-get install -y wrk")
    command = "python " + " ".join([str(Path(sys.argv[0]))] + sys.argv[1:])
    info = machine()
    root = Path(tempfile.mkdtemp(prefix="uba-api-bench-"))
    try:
        t0 = time.perf_counter()
        env, matrix, version, as_of = build_world(root, args.users, args.days)
        print(f"world ready in {time.perf_counter() - t0:.0f}s: bundle {version}", flush=True)
        bodies = root / "bodies.jsonl"
        n_bodies = request_bodies(root, as_of, bodies)
        script = root / "post.lua"
        script.write_text(LUA % {"bodies": bodies})
        micro = scorer_microbenchmark(env, matrix)
        print(f"scorer alone: {micro}", flush=True)
        index = baseline_index_microbenchmark(env)
        print(f"baseline index: {index}", flush=True)
        runs = []
        for scorer in ("compact", "sklearn"):
            scorer_env = {**env, "UBA_API__SCORER": scorer,
                          "UBA_API__SKLEARN_TRAINING_MATRIX": str(matrix)}
            with server(scorer_env, root / f"server-{scorer}.log") as url:
                drive(url, script, 4, 5)  # warm-up
                for c in (int(x) for x in args.connections.split(",")):
                    stats = drive(url, script, c, args.duration)
                    runs.append(Run(scorer=scorer, connections=c, **stats))
                    print(runs[-1], flush=True)
        setup = {"users": args.users, "days": args.days, "rows": int(np.load(matrix).shape[0]),
                 "version": version, "as_of": as_of, "bodies": n_bodies, "duration": args.duration}
        write_results(args.out, runs, info, micro, index, command, setup)
        print(f"wrote {args.out}")
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
