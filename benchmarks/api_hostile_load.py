"""/predict under load with hot reloads, with and without hostile /feedback posts mixed in.

The API hardening target: "A 60 s load on /predict at 16 connections, with a reload every 5 s and hostile
/feedback posts mixed in, gives 0 errors on the valid requests. Its p99 is no worse than
2x the p99 of the same run without the hostile traffic." Before the fix one /feedback
body of 100,000 empty items held the event loop for 1-2 s.

What it does, with the product's own code, on 127.0.0.1 only:

1. makes a tiny world with the real CLI (``uba-batch generate`` + ``train`` + ``score``,
   as ``api_schemathesis.py`` does) and starts one ``uba-api`` worker on a free port;
2. runs phases of ``--seconds`` each, alternating ``baseline`` and ``hostile``
   (``--rounds`` pairs), every phase with the same valid traffic: ``--connections``
   closed-loop clients posting real events of the scored day to ``/predict``, a
   ``POST /admin/reload`` every ``--reload-every`` seconds, and a ``GET /health`` probe
   every 100 ms;
3. the ``hostile`` phases add ``--hostile-rate`` /feedback posts per second, cycling
   through: 100,000 empty items (the abusive input), max_batch + 1 valid items, 50,000
   invalid items, an array nested 20,000 deep, 400,000 empty strings, and a valid
   1,000-item body whose notes are full of JSON punctuation (stored: it must not be
   refused);
   (the hostile client runs in its own process, so its megabytes do not slow the valid
   clients' event loop);
4. every loop is bounded by the phase deadline and stops by itself; the script writes
   ``benchmarks/results/api_hostile_load.md`` (machine, load average, command, figures).

Run: ``.venv/bin/python benchmarks/api_hostile_load.py --output benchmarks/results/api_hostile_load.md``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import machine_info  # noqa: E402
from api_schemathesis import START, TRAIN_DAYS, api_server, make_world  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
MAX_BATCH = 1000
NOTE = 'x, y: {z} [w], "q" \\ ' * 20


def hostile_bodies() -> list[tuple[str, bytes]]:
    """The /feedback bodies the hostile client cycles through (each under api.max_body_bytes)."""
    item = {"event_id": "load-e1", "label": "benign"}
    return [
        ("100k empty items", json.dumps({"items": [{}] * 100_000}).encode()),
        ("max_batch + 1 items", json.dumps({"items": [item] * (MAX_BATCH + 1)}).encode()),
        ("50k invalid items", json.dumps({"items": [{"event_id": "e", "label": "x"}] * 50_000}).encode()),
        ("nested 20k deep", ('{"items": ' + "[" * 20_000).encode()),
        ("400k empty strings", json.dumps({"items": [""] * 400_000}).encode()),
        ("1000 items, punctuation in notes", json.dumps(
            {"items": [{**item, "analyst": "a", "note": NOTE}] * MAX_BATCH}).encode()),
    ]


def predict_bodies(data_dir: Path) -> list[bytes]:
    """Real events of the scored day, as clients would post them."""
    from uba import io

    day = START + timedelta(days=TRAIN_DAYS)
    frame = io.scan_events(data_dir, day).head(400).collect()
    bodies = []
    for row in frame.iter_rows(named=True):
        event = {k: row[k] for k in ("event_id", "user_id", "event_type", "session_duration_sec",
                                     "events_in_session", "device_type")}
        event["timestamp"] = row["timestamp"].isoformat()
        bodies.append(json.dumps(event).encode())
    return bodies


@dataclass
class Phase:
    name: str
    latencies_ms: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    reloads: Counter[int] = field(default_factory=Counter)
    reload_ms: list[float] = field(default_factory=list)
    health_ms: list[float] = field(default_factory=list)
    hostile: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


async def valid_client(client: httpx.AsyncClient, bodies: list[bytes], start: int, deadline: float,
                       phase: Phase) -> None:
    i = start
    headers = {"content-type": "application/json"}
    while time.monotonic() < deadline:
        i = (i + 1) % len(bodies)
        began = time.perf_counter()
        try:
            response = await client.post("/predict", content=bodies[i], headers=headers)
            if response.status_code != 200:
                phase.errors[str(response.status_code)] += 1
                continue
        except httpx.HTTPError as exc:
            phase.errors[type(exc).__name__] += 1
            continue
        phase.latencies_ms.append((time.perf_counter() - began) * 1000)


async def reloader(client: httpx.AsyncClient, every: float, deadline: float, phase: Phase) -> None:
    while time.monotonic() + every < deadline:
        await asyncio.sleep(every)
        began = time.perf_counter()
        try:
            response = await client.post("/admin/reload")
        except httpx.HTTPError as exc:  # counted and shown, not a crash of the benchmark
            phase.reloads[type(exc).__name__] += 1
            continue
        phase.reloads[response.status_code] += 1
        phase.reload_ms.append((time.perf_counter() - began) * 1000)


async def health_probe(client: httpx.AsyncClient, deadline: float, phase: Phase) -> None:
    while time.monotonic() < deadline:
        began = time.perf_counter()
        response = await client.get("/health")
        if response.status_code == 200:
            phase.health_ms.append((time.perf_counter() - began) * 1000)
        await asyncio.sleep(0.1)


async def hostile_posts(url: str, rate: float, seconds: float) -> Counter[str]:
    """Fire-and-collect hostile posts at ``rate`` per second for ``seconds`` (not closed loop:
    a hostile client does not wait for its answers); the answers by label and status."""
    bodies = hostile_bodies()
    counts: Counter[str] = Counter()
    headers = {"content-type": "application/json"}
    deadline = time.monotonic() + seconds

    async def post(client: httpx.AsyncClient, label: str, body: bytes) -> None:
        try:
            response = await client.post("/feedback", content=body, headers=headers)
            counts[f"{label}: {response.status_code}"] += 1
        except httpx.HTTPError as exc:
            counts[f"{label}: {type(exc).__name__}"] += 1

    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        tasks = []
        n = 0
        while time.monotonic() < deadline:
            label, body = bodies[n % len(bodies)]
            tasks.append(asyncio.create_task(post(client, label, body)))
            n += 1
            await asyncio.sleep(1 / rate)
        await asyncio.gather(*tasks)
    return counts


def start_hostile_process(url: str, rate: float, seconds: float) -> subprocess.Popen[str]:
    """The hostile client runs in its own process, so building and sending its megabytes
    does not slow the valid clients' event loop (only the server should feel it)."""
    return subprocess.Popen([sys.executable, __file__, "--hostile-worker", url, str(rate), str(seconds)],
                            stdout=subprocess.PIPE, text=True)


async def hostile_client(url: str, rate: float, seconds: float, phase: Phase) -> None:
    process = start_hostile_process(url, rate, seconds)
    out, _ = await asyncio.to_thread(process.communicate, timeout=seconds + 120)
    phase.hostile.update(json.loads(out))


async def run_phase(url: str, name: str, args: argparse.Namespace, bodies: list[bytes]) -> Phase:
    phase = Phase(name)
    limits = httpx.Limits(max_connections=args.connections + 8, max_keepalive_connections=args.connections + 8)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client, \
            httpx.AsyncClient(base_url=url, timeout=60) as side:
        for body in bodies[:20]:  # warm-up
            await client.post("/predict", content=body, headers={"content-type": "application/json"})
        began = time.monotonic()
        deadline = began + args.seconds
        tasks = [valid_client(client, bodies, 17 * c, deadline, phase) for c in range(args.connections)]
        tasks += [reloader(side, args.reload_every, deadline, phase), health_probe(side, deadline, phase)]
        if name == "hostile":
            tasks.append(hostile_client(url, args.hostile_rate, args.seconds, phase))
        await asyncio.gather(*tasks)
        phase.seconds = time.monotonic() - began
    return phase


def summary_row(phase: Phase) -> str:
    lat = phase.latencies_ms
    return (f"| {phase.name} | {len(lat)} | {len(lat) / phase.seconds:.1f} | {statistics.median(lat):.1f} | "
            f"{percentile(lat, 90):.1f} | {percentile(lat, 99):.1f} | {max(lat):.1f} | "
            f"{sum(phase.errors.values())} | {dict(phase.reloads)} | {percentile(phase.health_ms, 99):.1f} |")


def write_markdown(path: Path, phases: list[Phase], info: dict[str, str], command: str,
                   args: argparse.Namespace, load_end: str) -> None:
    base = [p for p in phases if p.name == "baseline"]
    host = [p for p in phases if p.name == "hostile"]
    p99_base = percentile([v for p in base for v in p.latencies_ms], 99)
    p99_host = percentile([v for p in host for v in p.latencies_ms], 99)
    errors = sum(sum(p.errors.values()) for p in phases)
    lines = [
        "# /predict under load with reloads, with and without hostile /feedback posts", "",
        f"Recorded {datetime.now(UTC):%Y-%m-%d %H:%M} UTC by `benchmarks/api_hostile_load.py`.", "",
        "Command:", "", "```", command, "```", "",
        "## Machine", "", *[f"- {k}: {v}" for k, v in info.items()], f"- load average at end: {load_end}",
        "- The server (one uvicorn worker), the load generator (one asyncio process, httpx) and the "
        "machine's other work share these cores.", "",
        "## Setup", "",
        f"- World: `uba-batch generate` + `train` + `score` (tiny, {args.users} users); `uba-api` on 127.0.0.1, "
        "one worker, access log off, no API keys.",
        f"- Every phase: {args.seconds:g} s, {args.connections} closed-loop connections posting 400 real "
        f"events of the scored day to `/predict`, `POST /admin/reload` every {args.reload_every:g} s, "
        "`GET /health` every 100 ms.",
        f"- `hostile` phases add {args.hostile_rate:g} `/feedback` posts per second (not waiting for answers), "
        "cycling through: " + "; ".join(label for label, _ in hostile_bodies()) + ".",
        f"- Phases alternate baseline/hostile, {args.rounds} pair(s).", "",
        "## Results", "",
        "| phase | valid requests | req/s | p50 ms | p90 ms | p99 ms | max ms | errors | reloads (status: n) | "
        "/health p99 ms |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|---:|",
        *[summary_row(p) for p in phases], "",
        f"- Errors on valid requests (non-200 or connection errors), all phases: **{errors}**.",
        f"- p99 of the valid requests: baseline {p99_base:.1f} ms, hostile {p99_host:.1f} ms: "
        f"**x{p99_host / p99_base:.2f}** (target <= 2x).", "",
        "Hostile answers (label: status: count):", "",
    ]
    counts: Counter[str] = Counter()
    for p in host:
        counts.update(p.hostile)
    lines += [f"- {k}: {v}" for k, v in sorted(counts.items())]
    path.write_text("\n".join(lines) + "\n")


async def run_all(url: str, args: argparse.Namespace, bodies: list[bytes]) -> list[Phase]:
    phases = []
    for _ in range(args.rounds):
        for name in ("baseline", "hostile"):
            phase = await run_phase(url, name, args, bodies)
            print(summary_row(phase), flush=True)
            phases.append(phase)
    return phases


def main() -> None:
    if sys.argv[1:2] == ["--hostile-worker"]:  # the hostile client's own process
        url, rate, seconds = sys.argv[2], float(sys.argv[3]), float(sys.argv[4])
        print(json.dumps(asyncio.run(hostile_posts(url, rate, seconds))))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=40)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--reload-every", type=float, default=5)
    parser.add_argument("--hostile-rate", type=float, default=2, help="hostile /feedback posts per second")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--output", type=Path, default=REPO / "benchmarks" / "results" / "api_hostile_load.md")
    args = parser.parse_args()
    info = machine_info("fastapi", "uvicorn", "httpx")
    env = {k: v for k, v in os.environ.items() if not k.startswith("UBA_")}
    env.update(RAY_USAGE_STATS_ENABLED="0", RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", UBA_MODEL__N_ESTIMATORS="60",
               UBA_API__MAX_BATCH=str(MAX_BATCH))
    with tempfile.TemporaryDirectory(prefix="uba-hostile-load-") as tmp:
        root = Path(tmp)
        data, models = make_world(root, args.users, env)
        bodies = predict_bodies(data)
        with api_server(data, models, env, root / "api.log") as url:
            phases = asyncio.run(run_all(url, args, bodies))
        server_log = (root / "api.log").read_text()
        tracebacks = server_log.count("Traceback")
        if tracebacks:
            print(server_log[-6000:], file=sys.stderr)
    load_end = " ".join(f"{v:.2f}" for v in os.getloadavg())
    command = ".venv/bin/python benchmarks/api_hostile_load.py " + shlex.join(sys.argv[1:])
    write_markdown(args.output, phases, info, command, args, load_end)
    if tracebacks:
        with open(args.output, "a") as out:
            out.write(f"\nServer log: {tracebacks} traceback(s).\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
