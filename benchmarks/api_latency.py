"""POST /predict over HTTP on 127.0.0.1: the product against a seed-style server.

Default mode (the API latency targets, all in one run, same world, same payload mix):

1. generates a seed-sized world (``--users`` users, ``--days`` training days) into a
   temporary directory and trains a bundle with the product's ``train_model`` (default
   settings); trains it a second time (a second bundle version, same forest) so that
   reloads really swap a model; fits the seed-style model (``seed_style_score.py
   --fit``: seed features, StandardScaler + scikit-learn IsolationForest with the
   bundle's parameters and seed, on the same training window);
2. picks request bodies from the day after training in four classes by the product's
   own verdict (known/unknown user x ordinary/flagged; ``classify_bodies``), adds the
   seed payload's ``hour_of_day`` / ``day_of_week`` (taken from the timestamp, UTC) and
   interleaves them; both servers get exactly these bodies;
3. drives them with ``wrk`` (Debian package; one thread, a Lua script rotating through
   the bodies, closed loop, keep-alive) for ``--duration`` seconds per cell against:
   - the product, ``uba-api`` (uvicorn, factory ``uba.api.app:create_app``), access log
     off: 1 and 16 connections; 16 connections while a side loop flips ``LATEST``
     between the two bundles and POSTs ``/admin/reload`` every 5 s; ``/predict/batch``
     with ``--batch-size`` events per request;
   - the seed-style server (``seed_style_api.py``: pandas features + scikit-learn
     ``score_samples`` per request, one uvicorn worker, no access log): 1 and 16;
   - the product with ``UBA_API__WORKERS=1`` (access log off, then on) and
     ``UBA_API__WORKERS=2`` at 16 connections;
   - the product over a 100,000-user baseline snapshot (the run's snapshot with its
     users copied under new ids), RSS of the server sampled every second over a load
     after a warm-up;
4. writes ``benchmarks/results/api_latency.md``: machine, command, commit, load
   averages per cell, the figures, the ratios the API latency targets ask for and which targets are
   met.

``--inprocess`` instead times the handler's own work through the ASGI app (results in
``benchmarks/results/api_inprocess.md``). ``--serving`` runs the serving choices side by
side over HTTP in alternating rounds: the batcher (adaptive, always coalescing, inline),
keep-alive off, access log on, 2 workers, stdlib json instead of orjson (results in
``benchmarks/results/api_serving.md``; the variants come from ``api_variant_server.py``).

Run: ``.venv/bin/python benchmarks/api_latency.py`` (needs ``wrk``: ``apt-get install -y wrk``);
``--duration 5`` for a quick check.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import numpy as np

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "api_latency.md"
START = date(2026, 3, 2)
BODIES = 400


def build_world(root: Path, users: int, days: int) -> tuple[dict[str, str], Path, str, date]:
    """Generate, train (the real `train`), save the training matrix; returns env, matrix, version, day."""
    from uba.features.pipeline import feature_matrix, window_features
    from uba.generate import GenerationOptions
    from uba.generate.store import write_generated
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


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


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


# ---- in process: the handler's own work per event -------------------------------

INPROCESS_RESULTS = REPO / "benchmarks" / "results" / "api_inprocess.md"
# The files the compiled request path rewrote: the "before" tree is the working tree with these taken
# from --baseline-rev, so both sides share everything else (validation, middleware, ...)
# and the ratio is the change's own.
CHANGED_PATHS = (
    "uba/features/events.py", "uba/features/compiled.py", "uba/features/__init__.py", "uba/features/reasons.py",
    "uba/features/pipeline.py", "uba/api/inference.py", "uba/api/state.py", "uba/api/batcher.py",
    "uba/api/routes/predict.py", "uba/alerting/thresholds.py", "uba/scoring/hooks.py", "uba/alerting/feedback.py",
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
    from uba.api.routes import predict as predict_route
    from uba.api.routes.predict import prediction, to_scoring_event

    def answer_bytes(made: Any) -> bytes:
        """The answer's JSON as the route makes it: a response model (before orjson) or plain
        values through the route's ``json_response``."""
        if hasattr(made, "model_dump_json"):
            return made.model_dump_json().encode()
        return bytes(predict_route.json_response(made).body)

    runtime = app.state.runtime
    state, models = runtime.holder.current, runtime.models
    parser = JsonBody(models.event, models.event_values, "1 event")
    max_reasons = runtime.settings.threshold.max_reasons
    events = [to_scoring_event(parser.parse(b)) for b in bodies]
    results = [score_events(state, [e], max_reasons) for e in events]
    steps = {
        "validate": lambda i: to_scoring_event(parser.parse(bodies[i])),
        "score_events": lambda i: score_events(state, [events[i]], max_reasons),
        "answer_json": lambda i: answer_bytes(prediction(state, events[i], results[i], 0)),
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


def baseline_tree(rev: str, dest: Path, whole: bool = False) -> Path:
    """The working tree's ``uba`` with CHANGED_PATHS as they were at ``rev`` (absent then: removed);
    ``whole``: all of ``uba`` as it was at ``rev`` (when the rest of the package has moved on so
    far that the old files no longer fit the new ones)."""
    if whole:
        archive = subprocess.run(["git", "archive", rev, "uba", "configs"], cwd=REPO, capture_output=True,
                                 check=True)
        dest.mkdir(parents=True, exist_ok=True)
        subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True)
        return dest
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
               "UBA_API__ACCESS_LOG": "false"}  # as the API latency targets were measured: access log off
        bodies = classify_bodies(env, root, as_of)
        missing = [name for name, found in bodies.items() if not found]
        if missing:
            raise RuntimeError(f"no request body found for {missing}")
        before = baseline_tree(args.baseline_rev, root / "before", args.baseline_whole)
        rounds: list[dict[str, Any]] = []
        for r in range(args.rounds):
            load = " ".join(f"{v:.2f}" for v in os.getloadavg())
            new = run_timing(REPO, {"env": env, "bodies": bodies, "calls": args.calls, "components": True},
                             root, "new")
            old_env = {**env, "UBA_CONFIG": str(before / "configs" / "default.yaml")} if args.baseline_whole else env
            old = (run_timing(before, {"env": old_env, "bodies": bodies, "calls": args.baseline_calls}, root, "old")
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
                 "bodies": {k: len(v) for k, v in bodies.items()}, "baseline_rev": args.baseline_rev,
                 "baseline_whole": args.baseline_whole}
        write_inprocess(args.out or INPROCESS_RESULTS, rounds, info, command, setup, profile, coalescing)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


def write_inprocess(path: Path, rounds: list[dict[str, Any]], info: dict[str, str], command: str,
                    setup: dict[str, Any], profile: dict[str, str] | None,
                    coalescing: list[dict[str, Any]] | None = None) -> None:
    lines = [
        "# /predict handler work per event, in process: before vs after",
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
        (f"- `before`: all of `uba/` as of `{setup['baseline_rev']}`" if setup.get("baseline_whole") else
         f"- `before`: the working tree with the compiled request path's files as of `{setup['baseline_rev']}` "
         f"({', '.join(CHANGED_PATHS)})")
        + "; `after`: the working tree. Same world, same bodies, "
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
                  "| class | whole call | validate body | score_events | answer as JSON | rest (FastAPI, middleware, batcher) |",
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


# ---- over HTTP: the API latency targets (wrk against uba-api and the seed-style server) ------

SEED_API = REPO / "benchmarks" / "seed_style_api.py"
RELOAD_EVERY_SEC = 5.0
MEMORY_USERS = 100_000
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
  return wrk.format(nil, "%(path)s", nil, bodies[i])
end
done = function(summary, latency, requests)
  io.write(string.format("P999 %%.0f\\nPMAX %%.0f\\n", latency:percentile(99.9), latency.max))
end
"""


def socket_errors(text: str) -> int:
    """wrk's ``connect 0, read 0, write 0, timeout 0`` as one count."""
    return sum(int(n) for n in re.findall(r"\d+", text)) if text != "none" else 0


def with_seed_fields(body: str) -> str:
    """The seed payload's ``hour_of_day`` / ``day_of_week``, from the body's timestamp in UTC
    (the product checks that they agree with it)."""
    event = json.loads(body)
    stamp = datetime.fromisoformat(event["timestamp"].replace("Z", "+00:00"))
    stamp = stamp.astimezone(UTC) if stamp.tzinfo else stamp
    return json.dumps({**event, "hour_of_day": stamp.hour, "day_of_week": stamp.weekday()})


def interleave(by_class: dict[str, list[str]]) -> list[str]:
    """One body of each class in turn, so every stretch of the load has the same mix."""
    mixed = []
    for k in range(max(len(v) for v in by_class.values())):
        mixed += [bodies[k % len(bodies)] for bodies in by_class.values()]
    return mixed


def lua_script(root: Path, name: str, bodies: list[str], path: str) -> Path:
    body_file = root / f"{name}.jsonl"
    body_file.write_text("\n".join(bodies) + "\n")
    script = root / f"{name}.lua"
    script.write_text(LUA % {"bodies": body_file, "path": path})
    return script


def loadavg() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def rss_kib(pid: int) -> int:
    """Resident set of ``pid`` plus its children (uvicorn's workers, if any), in KiB."""
    def one(p: int) -> int:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        except OSError:
            return 0
        return 0

    total = one(pid)
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        children = []
    return total + sum(one(int(c)) for c in children)


@contextmanager
def serve(cmd: list[str], env: dict[str, str], log: Path, ready: str, port: int,
          settle: int = 1):  # type: ignore[no-untyped-def]
    """Start a server in its own process group, wait until ``ready`` answers 200 ``settle``
    times in a row (several workers: each must have loaded), stop that group at the end."""
    with log.open("wb") as out:
        process = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline, good = time.monotonic() + 300, 0
        while good < settle:
            if process.poll() is not None:
                raise RuntimeError(f"server exited:\n{log.read_text()[-3000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"server not ready:\n{log.read_text()[-3000:]}")
            try:
                good = good + 1 if httpx.get(url + ready, timeout=2).status_code == 200 else 0
            except httpx.HTTPError:
                good = 0
            time.sleep(0.2 if good == 0 else 0.05)
        yield url, process
    finally:
        try:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=20)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def product_server(env: dict[str, str], log: Path, **settings: str):  # type: ignore[no-untyped-def]
    """``uba-api`` (uvicorn with the ``uba.api.app:create_app`` factory), settings as UBA_API__* env."""
    port = free_port()
    extra = {f"UBA_API__{k.upper()}": v for k, v in settings.items()}
    workers = int(extra.get("UBA_API__WORKERS", "1"))
    cmd = [str(Path(sys.executable).parent / "uba-api")]
    return serve(cmd, {**env, **extra, "UBA_API__PORT": str(port)}, log, "/ready", port,
                 settle=10 * workers)


def seed_server(env: dict[str, str], log: Path, data_dir: Path, as_of: date, model: Path):  # type: ignore[no-untyped-def]
    port = free_port()
    cmd = [sys.executable, str(SEED_API), "--data-dir", str(data_dir), "--date", as_of.isoformat(),
           "--model", str(model), "--port", str(port)]
    return serve(cmd, env, log, "/health", port)


def wrk(url: str, script: Path, path: str, connections: int, duration: int,
        headers: tuple[str, ...] = ()) -> dict[str, Any]:
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--latency", "--timeout", "10s",
           *(a for h in headers for a in ("-H", h)), "-s", str(script), url + path]
    result = subprocess.run(cmd, capture_output=True, text=True, check=True)
    stats = parse_wrk(result.stdout)
    stats["socket_errors"] = socket_errors(stats["errors"])
    tail = dict(re.findall(r"^(P999|PMAX) (\d+)$", result.stdout, flags=re.M))
    stats["p999_ms"] = int(tail["P999"]) / 1e3
    stats["max_ms"] = int(tail["PMAX"]) / 1e3
    return stats


def cell(cells: list[dict[str, Any]], name: str, server: str, url: str, script: Path, connections: int,
         duration: int, path: str = "/predict", side: Any = None, headers: tuple[str, ...] = (),
         **extra: Any) -> dict[str, Any]:
    """One wrk run, with the load average before and after; ``side`` runs in a thread meanwhile."""
    before = loadavg()
    stop = threading.Event()
    side_out: dict[str, Any] = {}
    thread = None
    if side is not None:
        thread = threading.Thread(target=side, args=(url, stop, side_out), daemon=True)
        thread.start()
    try:
        stats = wrk(url, script, path, connections, duration, headers)
    finally:
        stop.set()
        if thread is not None:
            thread.join(timeout=120)
    row = {"name": name, "server": server, "path": path, "connections": connections, "duration": duration,
           **stats, "load_before": before, "load_after": loadavg(), **extra, **side_out}
    cells.append(row)
    print(json.dumps({k: v for k, v in row.items() if k != "rss_samples_kib"}), flush=True)
    return row


def check_bodies(url: str, bodies: list[str]) -> dict[str, int]:
    """Every body once: all must answer 200; returns how many were flagged."""
    flagged = 0
    with httpx.Client(timeout=30) as client:
        for body in bodies:
            answer = client.post(url + "/predict", content=body, headers={"Content-Type": "application/json"})
            if answer.status_code != 200:
                raise RuntimeError(f"{url}/predict answered {answer.status_code}: {answer.text[:300]}")
            flagged += bool(answer.json()["is_anomaly"])
    return {"bodies": len(bodies), "flagged": flagged}


def reload_loop(model_dir: Path, versions: tuple[str, str]):  # type: ignore[no-untyped-def]
    """Side loop: every RELOAD_EVERY_SEC (the first half an interval into the load), point LATEST
    at the other bundle and POST /admin/reload."""
    from uba import io

    def run(url: str, stop: threading.Event, out: dict[str, Any]) -> None:
        calls: list[dict[str, Any]] = []
        k, wait = 0, RELOAD_EVERY_SEC / 2
        with httpx.Client(timeout=60) as client:
            while not stop.wait(wait):
                wait = RELOAD_EVERY_SEC
                k += 1
                io.write_text_atomic(versions[k % 2] + "\n", model_dir / "LATEST", durable=True)
                began = time.perf_counter()
                try:
                    answer = client.post(url + "/admin/reload")
                    status, body = answer.status_code, answer.json()
                except httpx.HTTPError as exc:
                    status, body = 0, {"error": str(exc)}
                calls.append({"status": status, "seconds": time.perf_counter() - began,
                              "changed": body.get("changed"), "model_version": body.get("model_version")})
        out["reloads"] = calls

    return run


def rss_sampler(pid: int):  # type: ignore[no-untyped-def]
    """Side loop: the server's RSS once a second while the load runs."""
    def run(url: str, stop: threading.Event, out: dict[str, Any]) -> None:
        samples = [rss_kib(pid)]
        while not stop.wait(1.0):
            samples.append(rss_kib(pid))
        samples.append(rss_kib(pid))
        out["rss_samples_kib"] = samples

    return run


def big_snapshot(data_dir: Path, out_dir: Path, users: int) -> tuple[int, int]:
    """A baseline snapshot of ``users`` users in the product's format: the run's snapshot with
    its users copied under new ids (the originals kept, so known users stay known)."""
    import polars as pl

    from uba import io
    from uba.features import POPULATION_USER

    as_of, path = io.latest_baseline_snapshot(data_dir)  # type: ignore[misc]
    snapshot = io.read_baseline_snapshot(path)
    people = snapshot.filter(pl.col("user_id") != POPULATION_USER)
    copies = -(-(users - people.height) // people.height)
    big = pl.concat([people] + [people.with_columns(pl.col("user_id") + f"-copy{k}") for k in range(copies)],
                    how="vertical").head(users)
    big = pl.concat([big, snapshot.filter(pl.col("user_id") == POPULATION_USER)], how="vertical")
    written = io.write_baseline_snapshot(big, out_dir, as_of)
    return big.height - 1, written.stat().st_size


def commit_measured(given: str | None = None) -> str:
    """The commit measured: ``given`` (running from an exported tree), else the repository's HEAD,
    with any uncommitted change under uba/ named."""
    if given:
        return given
    head = subprocess.run(["git", "log", "-1", "--format=%h %cI %s"], cwd=REPO, capture_output=True,
                          text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--", "uba"], cwd=REPO, capture_output=True,
                           text=True).stdout.split("\n")
    changed = [line[3:] for line in dirty if line.strip()]
    return head[:160] + (f" (working tree: uncommitted changes in {', '.join(changed)})" if changed else "")


def http_main(args: argparse.Namespace) -> None:
    from _machine import machine_info

    if shutil.which("wrk") is None:
        sys.exit("wrk not found: apt-get install -y wrk")
    sys.path.insert(0, str(REPO / "benchmarks"))
    import seed_style_score

    from uba import io
    from uba.model.bundle import load_bundle
    from uba.settings import load_settings
    from uba.training import train_model

    command = "python " + " ".join([str(Path(sys.argv[0]))] + sys.argv[1:])
    info = machine_info("fastapi", "uvicorn", "polars", "numpy", "pandas", "scikit-learn")
    commit = commit_measured(args.commit)
    root = Path(tempfile.mkdtemp(prefix="uba-api-http-"))
    cells: list[dict[str, Any]] = []
    d, conns = args.duration, [int(x) for x in args.connections.split(",")]
    top = max(conns)
    try:
        t0 = time.perf_counter()
        env, _, version, as_of = build_world(root, args.users, args.days)
        env = {**env, "RAY_USAGE_STATS_ENABLED": "0", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
               "UBA_API__ACCESS_LOG": "false", "UBA_API__WORKERS": "1"}
        settings = load_settings(env=env)
        workers_default = load_settings(env={k: v for k, v in env.items() if k != "UBA_API__WORKERS"}).api.workers
        model_dir, data_dir = settings.paths.model_dir, settings.paths.data_dir
        time.sleep(1.1)  # a second bundle version (same data, same forest) for the reload cell
        second = train_model(settings, as_of - timedelta(days=1), args.days).version
        io.write_text_atomic(version + "\n", model_dir / "LATEST", durable=True)
        if second == version:
            raise RuntimeError("the second training gave the same bundle version")
        params = load_bundle(model_dir).detector.params
        seed_model = root / "seed.pkl"
        seed_style_score.fit(data_dir, as_of, seed_model, args.days, 300_000, int(params["random_state"] or 42))
        by_class = {k: [with_seed_fields(b) for b in v] for k, v in classify_bodies(env, root, as_of).items()}
        missing = [name for name, found in by_class.items() if not found]
        if missing:
            raise RuntimeError(f"no request body found for {missing}")
        mixed = interleave(by_class)
        predict_lua = lua_script(root, "predict", mixed, "/predict")
        events = [json.loads(b) for b in mixed]
        batches = [json.dumps({"events": [events[(s * 37 + i) % len(events)] for i in range(args.batch_size)]})
                   for s in range(8)]
        batch_lua = lua_script(root, "batch", batches, "/predict/batch")
        big_dir = root / "data-100k"
        big_users, big_bytes = big_snapshot(data_dir, big_dir, MEMORY_USERS)
        print(f"world ready in {time.perf_counter() - t0:.0f}s: bundles {version}, {second}", flush=True)
        checks: dict[str, Any] = {}

        # 1. the product (default settings, access log off): 1 and 16 connections, then
        #    reloads every 5 s at 16, then /predict/batch
        with product_server(env, root / "product.log") as (url, process):
            rss_small = rss_kib(process.pid)
            checks["product"] = check_bodies(url, mixed)
            wrk(url, predict_lua, "/predict", 4, args.warmup)
            for c in conns:
                cell(cells, "product", "product", url, predict_lua, c, d)
            cell(cells, "product, /admin/reload every 5 s", "product", url, predict_lua, top, d,
                 side=reload_loop(model_dir, (version, second)))
            io.write_text_atomic(version + "\n", model_dir / "LATEST", durable=True)
            for c in (int(x) for x in args.batch_connections.split(",")):
                cell(cells, f"product /predict/batch ({args.batch_size} events)", "product", url, batch_lua, c, d,
                     path="/predict/batch", batch_size=args.batch_size)
        # 2. the seed-style server
        with seed_server(env, root / "seed.log", data_dir, as_of, seed_model) as (url, _):
            checks["seed"] = check_bodies(url, mixed)
            wrk(url, predict_lua, "/predict", 4, args.warmup)
            for c in conns:
                cell(cells, "seed-style", "seed", url, predict_lua, c, d)
        # 3. workers 1 vs 2 and the access log off vs on, at 16 connections, in rounds of
        #    alternating order (the machine's other work moves between cells)
        triple = [("1", "false"), ("1", "true"), ("2", "false")]
        for r in range(args.serving_rounds):
            for workers, access in (triple if r % 2 == 0 else triple[::-1]):
                log = root / f"product-w{workers}-log{access}-r{r + 1}.log"
                with product_server(env, log, workers=workers, access_log=access) as (url, _):
                    wrk(url, predict_lua, "/predict", 4, args.warmup)
                    size_before = log.stat().st_size
                    row = cell(cells, f"round {r + 1}: product, {workers} worker(s), access log "
                               f"{'on' if access == 'true' else 'off'}", "product", url, predict_lua, top, d,
                               workers=int(workers), access_log=access == "true", round=r + 1)
                    row["log_bytes"] = log.stat().st_size - size_before
        # 4. memory over a 100,000-user snapshot
        with product_server({**env, "UBA_DATA_DIR": str(big_dir)}, root / "product-100k.log") as (url, process):
            memory: dict[str, Any] = {"users": big_users, "snapshot_bytes": big_bytes,
                                      "rss_ready_kib": rss_kib(process.pid), "rss_small_ready_kib": rss_small,
                                      "served_users": httpx.get(url + "/model", timeout=10).json()["baseline_users"]}
            checks["product-100k"] = check_bodies(url, mixed)
            wrk(url, predict_lua, "/predict", top, args.memory_warmup)
            memory["rss_warm_kib"] = rss_kib(process.pid)
            cell(cells, f"product, {big_users:,}-user snapshot", "product", url, predict_lua, top, d,
                 side=rss_sampler(process.pid))
            memory["samples_kib"] = cells[-1].pop("rss_samples_kib")
        setup = {"users": args.users, "days": args.days, "version": version, "second": second, "as_of": as_of,
                 "classes": {k: len(v) for k, v in by_class.items()}, "bodies": len(mixed),
                 "batch_size": args.batch_size, "duration": d, "warmup": args.warmup,
                 "memory_warmup": args.memory_warmup, "checks": checks, "commit": commit,
                 "workers_default": workers_default,
                 "seed_params": {k: params[k] for k in ("n_estimators", "contamination", "random_state")}}
        (root / "cells.json").write_text(json.dumps({"cells": cells, "memory": memory, "setup": setup}, default=str))
        try:
            write_http(args.out or RESULTS, cells, memory, info, command, setup, top, conns)
        except Exception:
            args.keep = True  # the measurements stay in cells.json
            raise
    finally:
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


def _find(cells: list[dict[str, Any]], name: str, connections: int) -> dict[str, Any] | None:
    return next((c for c in cells if c["name"] == name and c["connections"] == connections), None)


def _errors(c: dict[str, Any]) -> int:
    return int(c["non_2xx"]) + int(c["socket_errors"])


def _verdict(ok: bool) -> str:
    return "**met**" if ok else "**missed**"


def write_http(path: Path, cells: list[dict[str, Any]], memory: dict[str, Any], info: dict[str, str],
               command: str, setup: dict[str, Any], top: int, conns: list[int]) -> None:
    low = min(conns)
    prod_low, prod_top = _find(cells, "product", low), _find(cells, "product", top)
    seed_low, seed_top = _find(cells, "seed-style", low), _find(cells, "seed-style", top)
    reload_cell = _find(cells, "product, /admin/reload every 5 s", top)
    rounds = sorted({c["round"] for c in cells if "round" in c})

    def serving(workers: int, access: bool) -> list[dict[str, Any]]:
        return [c for c in cells if c.get("workers") == workers and c.get("access_log") == access]

    def mean_rps(found: list[dict[str, Any]]) -> float:
        return statistics.mean(c["requests_per_s"] for c in found)

    w1, w1_log, w2 = serving(1, False), serving(1, True), serving(2, False)
    batch_cells = [c for c in cells if c["path"] == "/predict/batch"]
    assert prod_low and prod_top and seed_low and seed_top and reload_cell
    seed_best = max(seed_low["requests_per_s"], seed_top["requests_per_s"])
    samples = memory["samples_kib"]
    warm = memory["rss_warm_kib"]
    growth_max = max(samples) / warm - 1
    growth_end = samples[-1] / warm - 1
    reloads = reload_cell.get("reloads", [])
    lines = [
        "# /predict over HTTP: the product against a seed-style server",
        "",
        f"Recorded {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} by `benchmarks/api_latency.py`, "
        f"on commit `{setup['commit']}`.",
        "",
        "Command:", "", "```", command, "```", "",
        "## Machine", "",
        *(f"- {k}: {v}" for k, v in info.items()),
        "- Server, load generator (wrk, one thread) and the machine's other work share the 2 cores: "
        "the load average before and after every cell is in the tables.",
        "",
        "## Setup", "",
        f"- World: {setup['users']} users x {setup['days']} training days generated and trained with the product's "
        f"`train_model` (default settings; bundle `{setup['version']}`), baselines as of {setup['as_of']}; a second "
        f"training of the same window gave bundle `{setup['second']}` (same forest) for the reload cell.",
        f"- Payload mix: {setup['bodies']} bodies, the four classes interleaved ({setup['classes']}), classified by "
        "the product's own verdict (known/unknown user x ordinary/flagged) from real events of "
        f"{setup['as_of']} and the seed's long night session (18,000 s, 190 actions, 02:00); each body carries "
        "`timestamp` and the seed payload's `hour_of_day` / `day_of_week`. Every body was posted once to each "
        f"server before its load and answered 200: {setup['checks']}.",
        "- wrk: one thread, closed loop (each connection sends its next request when the previous answer "
        f"arrives), keep-alive, {setup['duration']} s per cell after a {setup['warmup']} s warm-up at 4 "
        "connections; `errors` = non-2xx answers + socket errors.",
        "- Product: `uba-api` (uvicorn, factory `uba.api.app:create_app`, default `configs/default.yaml` "
        f"settings; `api.workers` default at this commit: {setup['workers_default']}), "
        "`UBA_API__WORKERS=1` and `UBA_API__ACCESS_LOG=false` unless the cell says otherwise, log level INFO "
        "to a file.",
        "- Seed-style: `benchmarks/seed_style_api.py`, one uvicorn worker, no access log: per request a one-row "
        "pandas frame, the seed's features (`seed_style_score.seed_features`: merge with per-user means and "
        "spreads built with pandas from the 28 days of raw events before the day), StandardScaler and "
        "scikit-learn `IsolationForest.score_samples` on the row, threshold compare, JSON "
        f"({setup['seed_params']} from the bundle, fitted on the same training window).",
        "",
        "## Results", "",
        "| cell | server | path | connections | requests/s | events/s | p50 ms | p90 ms | p99 ms | p99.9 ms | "
        "max ms | requests | errors | load avg before / after |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for c in cells:
        per = c.get("batch_size", 1)
        lines.append(
            f"| {c['name']} | {c['server']} | `{c['path']}` | {c['connections']} | {c['requests_per_s']:.1f} | "
            f"{c['requests_per_s'] * per:,.0f} | {c['p50_ms']:.2f} | {c['p90_ms']:.2f} | {c['p99_ms']:.2f} | "
            f"{c['p999_ms']:.1f} | {c['max_ms']:.1f} | "
            f"{c['requests']:,} | {_errors(c)} | {c['load_before']} / {c['load_after']} |")
    thr = prod_top["requests_per_s"] / seed_top["requests_per_s"]
    p50 = prod_low["p50_ms"] / seed_low["p50_ms"]
    p99 = prod_top["p99_ms"] / seed_top["p99_ms"]
    best_batch = max(batch_cells, key=lambda c: c["requests_per_s"])
    batch_ratio = best_batch["requests_per_s"] * best_batch["batch_size"] / seed_best
    log_ratio = mean_rps(w1_log) / mean_rps(w1)
    worker_ratio = mean_rps(w2) / mean_rps(w1)

    def p99s(found: list[dict[str, Any]]) -> str:
        return ", ".join(f"{c['p99_ms']:.1f}" for c in found)

    def per_round(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> str:
        pairs = [(next(x for x in a if x["round"] == r), next(x for x in b if x["round"] == r)) for r in rounds]
        return ", ".join(f"round {x['round']} {x['requests_per_s'] / y['requests_per_s']:.2f}" for x, y in pairs)

    reload_ratio = reload_cell["p99_ms"] / prod_top["p99_ms"]
    swapped = sum(1 for r in reloads if r["status"] == 200 and r["changed"])
    lines += [
        "",
        "## The API latency targets (ratios in this run)", "",
        "| target | figure | verdict |", "|---|---|---|",
        f"| product / seed-style throughput at {top} connections >= 30x, 0 errors | "
        f"{prod_top['requests_per_s']:.0f} / {seed_top['requests_per_s']:.1f} req/s = **{thr:.1f}x**; "
        f"errors {_errors(prod_top)} | {_verdict(thr >= 30 and _errors(prod_top) == 0)} |",
        f"| p50 at {low} connection <= 1/10 of seed-style's | {prod_low['p50_ms']:.2f} / {seed_low['p50_ms']:.2f} ms "
        f"= **{p50:.3f}** (1/{1 / p50:.1f}) | {_verdict(p50 <= 0.1)} |",
        f"| p99 at {top} connections <= 1/10 of seed-style's | {prod_top['p99_ms']:.2f} / {seed_top['p99_ms']:.2f} ms "
        f"= **{p99:.3f}** (1/{1 / p99:.1f}) | {_verdict(p99 <= 0.1)} |",
        f"| `/predict/batch` ({best_batch['batch_size']} events) events/s >= 50x seed-style single-event "
        f"req/s (best seed cell) | {best_batch['requests_per_s'] * best_batch['batch_size']:,.0f} events/s at "
        f"{best_batch['connections']} connection(s) ({1000 / best_batch['requests_per_s'] * best_batch['connections']:.1f} "
        f"ms a request) / {seed_best:.1f} req/s = **{batch_ratio:.0f}x** | {_verdict(batch_ratio >= 50)} |",
        f"| access log costs <= 10% of throughput ({top} connections, 1 worker, mean of {len(rounds)} rounds) | "
        f"on / off = {mean_rps(w1_log):.0f} / {mean_rps(w1):.0f} req/s = **{log_ratio:.3f}** "
        f"({(1 - log_ratio) * 100:.1f}% cost; per round: {per_round(w1_log, w1)}; "
        f"{w1_log[0]['log_bytes']:,} bytes of log in round 1) | "
        f"{_verdict(log_ratio >= 0.9)} |",
        f"| p99 with `/admin/reload` every 5 s <= 2x without ({top} connections, same server) | "
        f"{reload_cell['p99_ms']:.2f} / {prod_top['p99_ms']:.2f} ms = **{reload_ratio:.2f}x**; "
        f"{len(reloads)} reloads, {swapped} swapped a bundle, statuses "
        f"{sorted({r['status'] for r in reloads})}, errors {_errors(reload_cell)} | "
        f"{_verdict(reload_ratio <= 2 and _errors(reload_cell) == 0)} |",
        f"| RSS growth over {setup['duration']} s of load after warm-up <= 5% "
        f"({memory['users']:,}-user snapshot) | warm {warm / 1024:.0f} MiB, max {max(samples) / 1024:.0f} MiB "
        f"(**{growth_max * 100:+.1f}%**), end {samples[-1] / 1024:.0f} MiB ({growth_end * 100:+.1f}%) | "
        f"{_verdict(growth_max <= 0.05)} |",
        "",
        f"Workers ({top} connections, access log off, mean of {len(rounds)} rounds): 2 workers / 1 worker = "
        f"{mean_rps(w2):.0f} / {mean_rps(w1):.0f} req/s = **{worker_ratio:.2f}x** (per round: {per_round(w2, w1)}; "
        f"p99 {p99s(w2)} vs {p99s(w1)} ms).",
        "",
        "Reloads during the reload cell (seconds from POST to answer): "
        + (", ".join(f"{r['seconds']:.2f}" for r in reloads) or "none") + ".",
        "",
        f"Memory ({memory['users']:,} users + the population row, {memory['served_users']:,} rows served "
        "according to `GET /model`; snapshot file "
        f"{memory['snapshot_bytes'] / 2**20:.0f} MiB): RSS at ready {memory['rss_ready_kib'] / 1024:.0f} MiB "
        f"(the {setup['users']}-user server at ready: {memory['rss_small_ready_kib'] / 1024:.0f} MiB), "
        f"after a {setup['memory_warmup']} s warm-up at {top} connections {warm / 1024:.0f} MiB; every second "
        "of the load (MiB): " + ", ".join(f"{s / 1024:.0f}" for s in samples) + ".",
        "",
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))
    print(f"wrote {path}")


# ---- serving choices over HTTP, side by side -------------------------------------

VARIANT_SERVER = REPO / "benchmarks" / "api_variant_server.py"
SERVING_RESULTS = REPO / "benchmarks" / "results" / "api_serving.md"


def variant_server(env: dict[str, str], log: Path, variant: str):  # type: ignore[no-untyped-def]
    """``uba-api`` with one choice switched to its alternative (``api_variant_server.py``)."""
    port = free_port()
    cmd = [sys.executable, str(VARIANT_SERVER), variant]
    return serve(cmd, {**env, "UBA_API__PORT": str(port)}, log, "/ready", port)


def keep_alive_check(url: str) -> dict[str, Any]:
    """Two requests on one HTTP/1.1 connection: both answered, the connection kept open."""
    import http.client

    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    out: dict[str, Any] = {}
    try:
        for i in range(2):
            conn.request("GET", "/health")
            answer = conn.getresponse()
            answer.read()
            out[f"status_{i + 1}"] = answer.status
            out[f"connection_header_{i + 1}"] = answer.getheader("connection")
            out[f"local_port_{i + 1}"] = conn.sock.getsockname()[1] if conn.sock else None
    finally:
        conn.close()
    out["same_connection"] = out["local_port_1"] is not None and out["local_port_1"] == out["local_port_2"]
    return out


def serving_plan(conns: list[int], top: int) -> list[tuple[str, dict[str, Any], list[tuple[str, int, tuple[str, ...]]]]]:
    """(server, how to start it, [(path, connections, extra wrk headers)]) per server of a round."""
    predict_all = [("/predict", c, ()) for c in conns]
    return [
        ("product", {}, [*predict_all, ("/predict", top, ("Connection: close",)), ("/predict/batch", 1, ())]),
        ("coalesce-always", {"variant": "coalesce-always"}, predict_all),
        ("inline", {"variant": "inline"}, predict_all),
        ("access log on", {"access_log": "true"}, [("/predict", top, ())]),
        ("2 workers", {"workers": "2"}, [("/predict", top, ())]),
        ("stdlib-json", {"variant": "stdlib-json"}, [("/predict", top, ()), ("/predict/batch", 1, ())]),
    ]


def serving_main(args: argparse.Namespace) -> None:
    """The serving choices side by side, in rounds of alternating server order: the batcher
    (adaptive, always coalescing, inline), keep-alive, the access log, workers, orjson."""
    from _machine import machine_info

    if shutil.which("wrk") is None:
        sys.exit("wrk not found: apt-get install -y wrk")
    command = "python " + " ".join([str(Path(sys.argv[0]))] + sys.argv[1:])
    info = machine_info("fastapi", "uvicorn", "httptools", "orjson", "numpy")
    root = Path(tempfile.mkdtemp(prefix="uba-api-serving-"))
    cells: list[dict[str, Any]] = []
    d, conns = args.duration, [int(x) for x in args.connections.split(",")]
    top = max(conns)
    try:
        env, _, version, as_of = build_world(root, args.users, args.days)
        env = {**env, "RAY_USAGE_STATS_ENABLED": "0", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
               "UBA_API__ACCESS_LOG": "false", "UBA_API__WORKERS": "1",
               "PYTHONPATH": os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
        mixed = interleave({k: [with_seed_fields(b) for b in v] for k, v in classify_bodies(env, root, as_of).items()})
        predict_lua = lua_script(root, "predict", mixed, "/predict")
        events = [json.loads(b) for b in mixed]
        batch_lua = lua_script(root, "batch", [json.dumps({"events": [events[(s * 37 + i) % len(events)]
                                                                      for i in range(args.batch_size)]})
                                               for s in range(8)], "/predict/batch")
        plan = serving_plan(conns, top)
        if args.servers:
            plan = [step for step in plan if step[0] in args.servers.split(",")]
        keep_alive: dict[str, Any] = {}
        for r in range(args.serving_rounds):
            for server, how, runs in (plan if r % 2 == 0 else plan[::-1]):
                log = root / f"{server.replace(' ', '-')}-r{r + 1}.log"
                how = dict(how)
                variant = how.pop("variant", None)
                start = variant_server(env, log, variant) if variant else product_server(env, log, **how)
                with start as (url, _):
                    check_bodies(url, mixed)
                    if server == "product" and not keep_alive:
                        keep_alive = keep_alive_check(url)
                    wrk(url, predict_lua, "/predict", 4, args.warmup)
                    for path, c, headers in runs:
                        cell(cells, server, server, url, batch_lua if path == "/predict/batch" else predict_lua,
                             c, d, path=path, headers=headers, round=r + 1,
                             keep_alive=not headers, batch_size=args.batch_size if path != "/predict" else 1)
        setup = {"users": args.users, "days": args.days, "version": version, "as_of": as_of,
                 "bodies": len(mixed), "batch_size": args.batch_size, "duration": d, "warmup": args.warmup,
                 "commit": commit_measured(args.commit), "keep_alive": keep_alive}
        (root / "cells.json").write_text(json.dumps({"cells": cells, "setup": setup}, default=str))
        write_serving(args.out or SERVING_RESULTS, cells, info, command, setup, conns, top)
    finally:
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


def _cells(cells: list[dict[str, Any]], server: str, path: str, connections: int,
           keep_alive: bool = True) -> list[dict[str, Any]]:
    return [c for c in cells if c["server"] == server and c["path"] == path
            and c["connections"] == connections and c.get("keep_alive", True) == keep_alive]


def _ratio_line(cells: list[dict[str, Any]], label: str, a: tuple[Any, ...], b: tuple[Any, ...]) -> str:
    """``label``: mean req/s of cells ``a`` / cells ``b``, with the per-round ratios and p50/p99."""
    ca, cb = _cells(cells, *a), _cells(cells, *b)
    if not ca or not cb:
        return f"- {label}: not measured"
    ma = statistics.mean(c["requests_per_s"] for c in ca)
    mb = statistics.mean(c["requests_per_s"] for c in cb)
    per = ", ".join(f"round {x['round']} {x['requests_per_s'] / y['requests_per_s']:.2f}" for x, y in zip(ca, cb, strict=True))
    p50 = f"p50 {statistics.median(c['p50_ms'] for c in ca):.2f} vs {statistics.median(c['p50_ms'] for c in cb):.2f} ms"
    p99 = f"p99 {statistics.median(c['p99_ms'] for c in ca):.2f} vs {statistics.median(c['p99_ms'] for c in cb):.2f} ms"
    return f"- {label}: {ma:,.0f} / {mb:,.0f} req/s = **{ma / mb:.2f}x** (per round: {per}; median {p50}, {p99})"


def write_serving(path: Path, cells: list[dict[str, Any]], info: dict[str, str], command: str,
                  setup: dict[str, Any], conns: list[int], top: int) -> None:
    lines = [
        "# Serving choices over HTTP, side by side",
        "",
        f"Recorded {datetime.now(UTC):%Y-%m-%d %H:%M} UTC by `benchmarks/api_latency.py --serving`, "
        f"on commit `{setup['commit']}`.",
        "", "Command:", "", "```", command, "```", "", "## Machine", "",
        *[f"- {k}: {v}" for k, v in info.items()],
        "- Server, load generator (wrk, one thread) and the machine's other work share the cores: "
        "the load average before and after every cell is in the table.",
        "", "## Setup", "",
        f"- World: {setup['users']} users x {setup['days']} training days, trained with `train_model` "
        f"(bundle `{setup['version']}`), baselines as of {setup['as_of']}; {setup['bodies']} request bodies, "
        "known/unknown users x ordinary/flagged interleaved, as in `api_latency.md`.",
        f"- Every server answered every body 200 before its load; then {setup['warmup']} s of warm-up at 4 "
        f"connections; each cell {setup['duration']} s of wrk (one thread, closed loop, keep-alive unless the "
        "cell sends `Connection: close`).",
        "- Servers of one round run one after the other, the order reversed every round.",
        "- `product`: `uba-api`, 1 worker, access log off (the batcher scores a lone request inline and "
        "coalesces once requests overlap, orjson answers). `coalesce-always`, `inline`, `stdlib-json`: "
        "the same server with that one choice switched (`benchmarks/api_variant_server.py`). "
        "`access log on`, `2 workers`: `uba-api` with that setting.",
        f"- Keep-alive check (two requests over one connection, product): {setup['keep_alive']}.",
        "", "## Results", "",
        "| round | server | path | connections | keep-alive | requests/s | events/s | p50 ms | p90 ms | p99 ms "
        "| max ms | requests | errors | load avg before / after |",
        "|---:|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for c in cells:
        lines.append(
            f"| {c['round']} | {c['server']} | `{c['path']}` | {c['connections']} | "
            f"{'on' if c.get('keep_alive', True) else 'off'} | {c['requests_per_s']:.1f} | "
            f"{c['requests_per_s'] * c['batch_size']:,.0f} | {c['p50_ms']:.2f} | {c['p90_ms']:.2f} | "
            f"{c['p99_ms']:.2f} | {c['max_ms']:.1f} | {c['requests']:,} | {_errors(c)} | "
            f"{c['load_before']} / {c['load_after']} |")
    lines += ["", "## Ratios (mean requests/s over the rounds; per-round ratios in brackets)", ""]
    for n in conns:
        lines.append(_ratio_line(cells, f"product (adaptive) / coalesce-always, /predict at {n}",
                                 ("product", "/predict", n), ("coalesce-always", "/predict", n)))
        lines.append(_ratio_line(cells, f"product (adaptive) / inline, /predict at {n}",
                                 ("product", "/predict", n), ("inline", "/predict", n)))
        lines.append(_ratio_line(cells, f"coalesce-always / inline, /predict at {n}",
                                 ("coalesce-always", "/predict", n), ("inline", "/predict", n)))
    lines.append(_ratio_line(cells, f"2 workers / 1 worker, /predict at {top}",
                             ("2 workers", "/predict", top), ("product", "/predict", top)))
    lines.append(_ratio_line(cells, f"access log on / off, /predict at {top}",
                             ("access log on", "/predict", top), ("product", "/predict", top)))
    lines.append(_ratio_line(cells, f"keep-alive off / on, /predict at {top}",
                             ("product", "/predict", top, False), ("product", "/predict", top)))
    lines.append(_ratio_line(cells, f"stdlib json / orjson, /predict at {top}",
                             ("stdlib-json", "/predict", top), ("product", "/predict", top)))
    lines.append(_ratio_line(cells, f"stdlib json / orjson, /predict/batch ({setup['batch_size']} events) at 1",
                             ("stdlib-json", "/predict/batch", 1), ("product", "/predict/batch", 1)))
    path.write_text("\n".join(lines) + "\n")
    print(f"wrote {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=500)
    parser.add_argument("--days", type=int, default=21)
    parser.add_argument("--duration", type=int, default=60, help="seconds of load per cell")
    parser.add_argument("--warmup", type=int, default=5, help="seconds of warm-up load per server")
    parser.add_argument("--memory-warmup", type=int, default=15,
                        help="seconds of load before the memory cell's reference RSS")
    parser.add_argument("--connections", default="1,16", help="comma-separated concurrency levels")
    parser.add_argument("--batch-size", type=int, default=1000, help="events per /predict/batch request")
    parser.add_argument("--serving-rounds", type=int, default=2,
                        help="rounds of the workers / access-log cells, order alternating")
    parser.add_argument("--batch-connections", default="1,2", help="concurrency levels for /predict/batch")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--commit", default=None,
                        help="the commit measured, when running from a tree exported with git archive")
    parser.add_argument("--keep", action="store_true", help="keep the temporary data directory")
    parser.add_argument("--inprocess", action="store_true",
                        help="time the handler's own work in process, before vs after")
    parser.add_argument("--calls", type=int, default=10_000, help="--inprocess: calls per payload class")
    parser.add_argument("--baseline-calls", type=int, default=1_000,
                        help="--inprocess: calls per class for the before side (0: skip it)")
    parser.add_argument("--baseline-rev", default="HEAD", help="--inprocess: the before side's revision")
    parser.add_argument("--baseline-whole", action="store_true",
                        help="--inprocess: the before side is all of uba/ at --baseline-rev, not only the compiled request path's files")
    parser.add_argument("--rounds", type=int, default=3, help="--inprocess: alternating rounds")
    parser.add_argument("--profile", action="store_true", help="--inprocess: add a cProfile of the after side")
    parser.add_argument("--coalescing", action="store_true",
                        help="--inprocess: also compare the batcher's coalescing with inline scoring")
    parser.add_argument("--serving", action="store_true",
                        help="the serving choices side by side over HTTP (batcher modes, keep-alive, access log, "
                             "workers, orjson), --serving-rounds rounds; writes results/api_serving.md")
    parser.add_argument("--servers", default=None,
                        help="--serving: comma-separated subset of the servers to run (default: all)")
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        inprocess_worker(args.worker)
        return
    if args.inprocess:
        inprocess_main(args)
        return
    if args.serving:
        serving_main(args)
        return
    http_main(args)


if __name__ == "__main__":
    main()
