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
    """Features of one event against a large compiled snapshot: the cost must not grow with it.

    The snapshot of the run is blown up to ``users`` users (copies of real rows under new
    ids) and compiled as the API compiles it at load; one event's features are then
    array lookups by its user's row.
    """
    import polars as pl

    from uba import io
    from uba.features import POPULATION_USER, compile_baselines
    from uba.features.compiled import event_columns, feature_arrays

    as_of, path = io.latest_baseline_snapshot(Path(env["UBA_DATA_DIR"]))  # type: ignore[misc]
    snapshot = io.read_baseline_snapshot(path)
    people = snapshot.filter(pl.col("user_id") != POPULATION_USER)
    copies = -(-users // people.height)
    big = pl.concat(
        [people.with_columns(pl.col("user_id") + f"-{k}") for k in range(copies)]
        + [snapshot.filter(pl.col("user_id") == POPULATION_USER)], how="vertical",
    )
    t = time.perf_counter()
    compiled = compile_baselines(big)
    out = {"users": float(big.height - 1), "compile": (time.perf_counter() - t) * 1e3}
    user = big["user_id"][big.height // 2]
    times = []
    for _ in range(2000):
        t = time.perf_counter()
        feature_arrays(compiled, event_columns(compiled, [user], ["login"], ["desktop"], [600.0], [12], [10], [2]))
        times.append(time.perf_counter() - t)
    out["indexed"] = statistics.median(times) * 1e3
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
        f"Features of one event against a compiled snapshot of {index['users']:,.0f} users (median):",
        "",
        f"- {index['indexed']:.3f} ms per event (compiling the snapshot at load: {index['compile']:.0f} ms)",
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


# ---- in process: the handler's own work per event (issue 12) -------------------------------

INPROCESS_RESULTS = REPO / "benchmarks" / "results" / "api_inprocess.md"
# The files issue 12 rewrites: the "before" tree is the working tree with these taken
# from --baseline-rev, so both sides share everything else (validation, middleware, ...)
# and the ratio is the change's own.
CHANGED_PATHS = (
    "uba/features/events.py", "uba/features/compiled.py", "uba/features/__init__.py", "uba/reasons.py",
    "uba/pipeline.py", "uba/api/inference.py", "uba/api/state.py", "uba/api/batcher.py",
    "uba/api/routes/predict.py", "uba/thresholds.py", "uba/operations.py", "uba/feedback.py",
    "uba/decision.py", "uba/scoring/shard.py", "uba/api/deps.py",
)
PAYLOAD_CLASSES = ("known_ordinary", "known_flagged", "unknown_ordinary", "unknown_flagged")
PER_CLASS_BODIES = 50


def asgi_request(path: str, body: bytes) -> dict[str, Any]:
    """The HTTP scope of a JSON POST, as a server would hand it to the app."""
    return {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
        "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
        "headers": [(b"host", b"bench"), (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode())],
        "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 8000),
    }


async def asgi_post(app: Any, path: str, body: bytes) -> tuple[int, bytes]:
    """One request straight through the ASGI app (no socket, no HTTP parser): what is timed
    is middleware, routing, validation, scoring and serialisation."""
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    status, chunks = 0, []

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))

    await app(asgi_request(path, body), receive, send)
    return status, b"".join(chunks)


async def _timed_calls(app: Any, bodies: list[bytes], calls: int) -> list[float]:
    times = []
    for i in range(calls):
        body = bodies[i % len(bodies)]
        began = time.perf_counter()
        status, answer = await asgi_post(app, "/predict", body)
        times.append(time.perf_counter() - began)
        if status != 200:
            raise RuntimeError(f"/predict answered {status}: {answer[:300]!r}")
    return times


async def _serve_and_time(spec: dict[str, Any]) -> dict[str, Any]:
    from uba.api.app import create_app
    from uba.settings import load_settings

    app = create_app(load_settings(env=spec["env"]))
    out: dict[str, Any] = {"median_ms": {}, "p99_ms": {}, "calls": spec["calls"]}
    async with app.router.lifespan_context(app):
        for name, bodies in spec["bodies"].items():
            encoded = [b.encode() for b in bodies]
            await _timed_calls(app, encoded, min(200, spec["calls"]))  # warm-up
            if spec.get("profile"):
                out.setdefault("profile", {})[name] = await _profile(app, encoded, spec["calls"])
                continue
            times = sorted(await _timed_calls(app, encoded, spec["calls"]))
            out["median_ms"][name] = statistics.median(times) * 1e3
            out["p99_ms"][name] = times[int(0.99 * (len(times) - 1))] * 1e3
            if spec.get("coalescing"):
                out.setdefault("coalescing", {})[name] = await _coalescing(app, encoded, spec["calls"])
                continue
            if spec.get("components"):
                out.setdefault("components_ms", {})[name] = _components(app, encoded)
    return out


async def _coalescing(app: Any, bodies: list[bytes], calls: int, rounds: int = 3) -> list[dict[str, float]]:
    """Requests/s through the ASGI app with 1 and 16 concurrent callers, with the batcher's
    coalescing (the product) and with each event scored inline on its own (the alternative).

    In process, so it isolates what coalescing saves in scoring from HTTP and sockets."""
    from uba.api.inference import score_events

    batcher = app.state.runtime.batcher
    coalesced = batcher.score
    max_reasons = app.state.runtime.settings.threshold.max_reasons

    async def inline(state: Any, event: Any) -> tuple[Any, int]:
        return score_events(state, [event], max_reasons), 0

    async def caller(n: int, offset: int) -> None:
        for i in range(n):
            status, answer = await asgi_post(app, "/predict", bodies[(i + offset) % len(bodies)])
            if status != 200:
                raise RuntimeError(f"/predict answered {status}: {answer[:300]!r}")

    import asyncio

    out = []
    try:
        for r in range(rounds):
            for mode, score in (("coalesced", coalesced), ("inline", inline)):
                batcher.score = score
                for callers in (1, 16):
                    began = time.perf_counter()
                    await asyncio.gather(*(caller(calls // callers, k) for k in range(callers)))
                    out.append({"round": r + 1, "mode": mode, "callers": callers,
                                "requests_per_s": calls / (time.perf_counter() - began),
                                "load": os.getloadavg()[0]})
    finally:
        batcher.score = coalesced
    return out


def _components(app: Any, bodies: list[bytes], calls: int = 3000) -> dict[str, float]:
    """Median ms of the handler's own steps for one event, called directly: parsing and
    validating the body, scoring (features, forest, reasons, decision), the answer as JSON."""
    from uba.api.body import JsonBody
    from uba.api.inference import score_events
    from uba.api.routes.predict import prediction, to_scoring_event

    runtime = app.state.runtime
    state, models = runtime.holder.current, runtime.models
    parser = JsonBody(models.event, models.event_values, "1 event")
    max_reasons = runtime.settings.threshold.max_reasons
    events = [to_scoring_event(parser.parse(b)) for b in bodies]
    results = [score_events(state, [e], max_reasons) for e in events]
    steps = {
        "validate": lambda i: to_scoring_event(parser.parse(bodies[i])),
        "score_events": lambda i: score_events(state, [events[i]], max_reasons),
        "answer_json": lambda i: prediction(state, events[i], results[i], 0).model_dump_json(),
    }
    out = {}
    for step, call in steps.items():
        times = []
        for k in range(calls):
            began = time.perf_counter()
            call(k % len(bodies))
            times.append(time.perf_counter() - began)
        out[step] = statistics.median(times) * 1e3
    return out


async def _profile(app: Any, bodies: list[bytes], calls: int) -> str:
    import cProfile
    import io as _io
    import pstats

    profiler = cProfile.Profile()
    profiler.enable()
    await _timed_calls(app, bodies, calls)
    profiler.disable()
    text = _io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(25)
    return text.getvalue()


def inprocess_worker(spec_path: Path) -> None:
    """Entry of the timing subprocess: imports whichever ``uba`` its PYTHONPATH names."""
    import asyncio

    spec = json.loads(spec_path.read_text())
    result = asyncio.run(_serve_and_time(spec))
    import uba

    result["uba_from"] = str(Path(uba.__file__).parent)
    print(json.dumps(result))


def baseline_tree(rev: str, dest: Path) -> Path:
    """The working tree's ``uba`` with CHANGED_PATHS as they were at ``rev`` (absent then: removed)."""
    shutil.copytree(REPO / "uba", dest / "uba", ignore=shutil.ignore_patterns("__pycache__"))
    for path in CHANGED_PATHS:
        shown = subprocess.run(["git", "show", f"{rev}:{path}"], cwd=REPO, capture_output=True)
        target = dest / path
        if shown.returncode == 0:
            target.write_bytes(shown.stdout)
        elif target.exists():
            target.unlink()
    return dest


def run_timing(pythonpath: Path, spec: dict[str, Any], work: Path, label: str) -> dict[str, Any]:
    spec_path = work / f"spec-{label}.json"
    spec_path.write_text(json.dumps(spec))
    env = {**spec["env"], "PYTHONPATH": str(pythonpath), "POLARS_MAX_THREADS": "1"}
    done = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--worker", str(spec_path)],
                          env=env, capture_output=True, text=True, timeout=3600)
    if done.returncode != 0:
        raise RuntimeError(f"{label} timing failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    if not result["uba_from"].startswith(str(pythonpath)):
        raise RuntimeError(f"{label} imported uba from {result['uba_from']}, not {pythonpath}")
    return result


def classify_bodies(env: dict[str, str], root: Path, day: date) -> dict[str, list[str]]:
    """Up to PER_CLASS_BODIES request bodies per payload class, sorted by how the product scores them.

    Candidates: the day's real events (known users), the same events under never-seen
    user ids, and the seed's long night session for both kinds of users.
    """
    import asyncio

    from uba import io

    events = io.scan_events(root / "data", day).head(BODIES).collect()
    candidates = []
    for i, row in enumerate(events.iter_rows(named=True)):
        body = {k: row[k] for k in ("event_id", "user_id", "event_type", "session_duration_sec",
                                    "events_in_session", "device_type")}
        body["timestamp"] = row["timestamp"].isoformat()
        seed = {**body, "session_duration_sec": 18000, "events_in_session": 190,
                "timestamp": row["timestamp"].replace(hour=2).isoformat(), "event_id": f"seed-{i}"}
        for one in (body, seed):
            candidates.append(one)
            candidates.append({**one, "user_id": f"bench-stranger-{i}", "event_id": f"{one['event_id']}-x"})

    async def judge() -> dict[str, list[str]]:
        from uba.api.app import create_app
        from uba.settings import load_settings

        app = create_app(load_settings(env=env))
        found: dict[str, list[str]] = {name: [] for name in PAYLOAD_CLASSES}
        async with app.router.lifespan_context(app):
            for body in candidates:
                text = json.dumps(body)
                status, answer = await asgi_post(app, "/predict", text.encode())
                if status != 200:
                    raise RuntimeError(f"/predict answered {status}: {answer[:300]!r}")
                verdict = json.loads(answer)
                name = (f"{'known' if verdict['known_user'] else 'unknown'}_"
                        f"{'flagged' if verdict['is_anomaly'] else 'ordinary'}")
                if len(found[name]) < PER_CLASS_BODIES:
                    found[name].append(text)
        return found

    return asyncio.run(judge())


def inprocess_main(args: argparse.Namespace) -> None:
    """Old (``--baseline-rev``) vs new handler work, alternating rounds in fresh processes."""
    from _machine import machine_info

    command = "python " + " ".join([str(Path(sys.argv[0]))] + sys.argv[1:])
    info = machine_info("polars", "numpy", "fastapi")
    root = Path(tempfile.mkdtemp(prefix="uba-api-inproc-"))
    try:
        env, _, version, as_of = build_world(root, args.users, args.days)
        env = {**env, "RAY_USAGE_STATS_ENABLED": "0", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
               "UBA_API__ACCESS_LOG": "false"}  # as issue 12 measured: access log off
        bodies = classify_bodies(env, root, as_of)
        missing = [name for name, found in bodies.items() if not found]
        if missing:
            raise RuntimeError(f"no request body found for {missing}")
        before = baseline_tree(args.baseline_rev, root / "before")
        rounds: list[dict[str, Any]] = []
        for r in range(args.rounds):
            load = " ".join(f"{v:.2f}" for v in os.getloadavg())
            new = run_timing(REPO, {"env": env, "bodies": bodies, "calls": args.calls, "components": True},
                             root, "new")
            old = (run_timing(before, {"env": env, "bodies": bodies, "calls": args.baseline_calls}, root, "old")
                   if args.baseline_calls else None)
            rounds.append({"round": r + 1, "load": load, "new": new, "old": old,
                           "load_after": " ".join(f"{v:.2f}" for v in os.getloadavg())})
            print(json.dumps(rounds[-1]), flush=True)
        coalescing = None
        if args.coalescing:
            spec = {"env": env, "bodies": {"mixed": [b for v in bodies.values() for b in v]},
                    "calls": 4000, "coalescing": True}
            coalescing = run_timing(REPO, spec, root, "coalescing")["coalescing"]["mixed"]
        profile = None
        if args.profile:
            profile = run_timing(REPO, {"env": env, "bodies": bodies, "calls": 2000, "profile": True},
                                 root, "profile")["profile"]
        setup = {"users": args.users, "days": args.days, "version": version, "as_of": as_of,
                 "bodies": {k: len(v) for k, v in bodies.items()}, "baseline_rev": args.baseline_rev}
        write_inprocess(args.out or INPROCESS_RESULTS, rounds, info, command, setup, profile, coalescing)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


def write_inprocess(path: Path, rounds: list[dict[str, Any]], info: dict[str, str], command: str,
                    setup: dict[str, Any], profile: dict[str, str] | None,
                    coalescing: list[dict[str, Any]] | None = None) -> None:
    lines = [
        "# /predict handler work per event, in process: before vs after issue 12",
        "",
        f"Recorded {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} by `benchmarks/api_latency.py --inprocess`.",
        "",
        "Command:", "", "```", command, "```", "",
        "## Machine", "",
        *(f"- {k}: {v}" for k, v in info.items()), "",
        "## What is timed", "",
        "- One `POST /predict` at a time straight through the ASGI app (`create_app()` with its lifespan, "
        "middleware, API-key check, body validation, scoring, JSON answer): no socket, no HTTP parser.",
        f"- World: {setup['users']} users x {setup['days']} days generated and trained with `train_model` "
        f"(bundle `{setup['version']}`), baselines as of {setup['as_of']}.",
        f"- Payload classes (bodies per class, rotated): {setup['bodies']}; classified by the product's own "
        "verdict (known/unknown user, flagged/ordinary).",
        f"- `before`: the working tree with issue 12's files as of `{setup['baseline_rev']}` "
        f"({', '.join(CHANGED_PATHS)}); `after`: the working tree. Same world, same bodies, "
        "one fresh process per side per round, `POLARS_MAX_THREADS=1`, sides alternating.",
        "",
        "## Results (median ms per call; p99 in brackets)", "",
        "| round | load avg before / after | side | calls per class | "
        + " | ".join(PAYLOAD_CLASSES) + " |",
        "|---|---|---|---:|" + "---:|" * len(PAYLOAD_CLASSES),
    ]
    for r in rounds:
        for side in ("old", "new"):
            res = r[side]
            if res is None:
                continue
            cells = " | ".join(f"{res['median_ms'][c]:.3f} ({res['p99_ms'][c]:.2f})" for c in PAYLOAD_CLASSES)
            label = "before" if side == "old" else "after"
            lines.append(f"| {r['round']} | {r['load']} / {r['load_after']} | {label} | {res['calls']} | {cells} |")
    if all(r["old"] for r in rounds):
        lines += ["", "Ratio before / after, per round (same run, same world):", ""]
        for r in rounds:
            ratios = ", ".join(f"{c} x{r['old']['median_ms'][c] / r['new']['median_ms'][c]:.1f}"
                               for c in PAYLOAD_CLASSES)
            lines.append(f"- round {r['round']}: {ratios}")
    parts = [r["new"].get("components_ms") for r in rounds if r["new"].get("components_ms")]
    if parts:
        lines += ["", "## Where the after side's time goes (median ms, steps called directly, last round)", "",
                  "| class | whole call | validate body | score_events | answer as JSON | rest (FastAPI, middleware) |",
                  "|---|---:|---:|---:|---:|---:|"]
        last = rounds[-1]["new"]
        for c in PAYLOAD_CLASSES:
            comp = last["components_ms"][c]
            rest = last["median_ms"][c] - sum(comp.values())
            lines.append(f"| {c} | {last['median_ms'][c]:.3f} | {comp['validate']:.3f} | "
                         f"{comp['score_events']:.3f} | {comp['answer_json']:.3f} | {rest:.3f} |")
    if coalescing:
        lines += ["", "## Coalescing concurrent requests (after side, 4,000 calls per cell, mixed payloads)", "",
                  "| round | scoring | callers | requests/s | load avg (1 min) |", "|---:|---|---:|---:|---:|"]
        lines += [f"| {c['round']} | {c['mode']} | {c['callers']} | {c['requests_per_s']:.0f} | {c['load']:.2f} |"
                  for c in coalescing]
    if profile:
        lines += ["", "## Where the time goes (after; cProfile, 2,000 calls per class, top by own time)", ""]
        for name, text in profile.items():
            lines += [f"### {name}", "", "```", text.strip(), "```", ""]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    print(f"wrote {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=500)
    parser.add_argument("--days", type=int, default=21)
    parser.add_argument("--duration", type=int, default=60, help="seconds of load per cell")
    parser.add_argument("--connections", default="1,16", help="comma-separated concurrency levels")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--keep", action="store_true", help="keep the temporary data directory")
    parser.add_argument("--inprocess", action="store_true",
                        help="time the handler's own work in process, before vs after (issue 12)")
    parser.add_argument("--calls", type=int, default=10_000, help="--inprocess: calls per payload class")
    parser.add_argument("--baseline-calls", type=int, default=1_000,
                        help="--inprocess: calls per class for the before side (0: skip it)")
    parser.add_argument("--baseline-rev", default="HEAD", help="--inprocess: the before side's revision")
    parser.add_argument("--rounds", type=int, default=3, help="--inprocess: alternating rounds")
    parser.add_argument("--profile", action="store_true", help="--inprocess: add a cProfile of the after side")
    parser.add_argument("--coalescing", action="store_true",
                        help="--inprocess: also compare the batcher's coalescing with inline scoring")
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        inprocess_worker(args.worker)
        return
    if args.inprocess:
        inprocess_main(args)
        return
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
        write_results(args.out or RESULTS, runs, info, micro, index, command, setup)
        print(f"wrote {args.out or RESULTS}")
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
