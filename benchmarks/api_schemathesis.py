"""Schemathesis against a real ``uba-api`` on 127.0.0.1: no 5xx, no answer outside the schema.

The API hardening asks for "a schemathesis run of at least 1,000 cases, with and without API keys,
[that] finds no 5xx and no schema violation". This script, end to end with the product:

1. makes a tiny world in a temporary directory with the real CLI: ``uba-batch generate``
   (``--users`` users, 9 days), ``train`` on the first 8 days and ``score --date`` of the
   9th (which writes the baseline snapshot the API serves);
2. starts ``uba-api`` on a free loopback port three times: without keys, with
   ``UBA_API_KEYS`` and the key sent (``-H X-API-Key``), and with keys but none sent
   (every protected route must then answer a declared 401);
3. runs ``schemathesis run`` on ``/openapi.json`` with every check, all of the examples,
   coverage and fuzzing phases, a fixed seed and ``--max-examples``, and reads the
   JSON report: cases generated, failures per check;
4. writes ``benchmarks/results/api_schemathesis.md`` (machine, load average, commands).

The verdict is two checks: ``not_a_server_error`` (no 5xx) and the
response-conformance checks (status code, content type, headers and body all declared in
the schema). The request-fidelity checks (``positive_data_acceptance``,
``negative_data_rejection``) are reported too; a failure there means the schema is
looser or stricter than the server on some input (e.g. a cross-field rule JSON Schema
cannot state), not that the server answered outside its contract.

Run: ``.venv/bin/python benchmarks/api_schemathesis.py --output benchmarks/results/api_schemathesis.md``
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import machine_info  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
START = date(2026, 3, 1)
TRAIN_DAYS = 8
KEY = "schemathesis-key"
VERDICT_CHECKS = {
    "not_a_server_error": "no 5xx",
    "status_code_conformance": "status declared",
    "content_type_conformance": "content type declared",
    "response_headers_conformance": "headers declared",
    "response_schema_conformance": "body matches schema",
}
# A body over api.max_batch items is refused with 413 (counted before validation); that is a
# rejection, so negative_data_rejection accepts it like 400 and 422.
SCHEMATHESIS_TOML = """
[checks.negative_data_rejection]
expected-statuses = [400, 401, 403, 404, 405, 406, 409, 413, 415, 422, 428, 429]
"""


@dataclass
class RunResult:
    label: str
    command: list[str]
    seconds: float
    exit_code: int
    generated: int = 0
    failures: Counter[str] = field(default_factory=Counter)
    statuses: Counter[str] = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)


def cli(*args: str, env: dict[str, str]) -> None:
    """One ``uba-batch`` command; its failure stops the benchmark with the command's stderr."""
    run = subprocess.run([str(BIN / "uba-batch"), *args], env=env, capture_output=True, text=True)
    if run.returncode != 0:
        raise SystemExit(f"uba-batch {' '.join(args)} failed:\n{run.stderr[-2000:]}")


def make_world(root: Path, users: int, env: dict[str, str]) -> tuple[Path, Path]:
    """generate + train + score with the real CLI; returns (data_dir, model_dir)."""
    data, models = root / "data", root / "models"
    score_day = START + timedelta(days=TRAIN_DAYS)
    cli("generate", "--out", str(data), "--users", str(users), "--days", str(TRAIN_DAYS + 1),
        "--start", START.isoformat(), "--seed", "7", env=env)
    cli("train", "--data-dir", str(data), "--end-date", (score_day - timedelta(days=1)).isoformat(),
        "--window-days", str(TRAIN_DAYS), "--model-dir", str(models), env=env)
    cli("score", "--date", score_day.isoformat(), "--data-dir", str(data), "--model-dir", str(models),
        "--output-dir", str(root / "output"), env=env)
    return data, models


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def api_server(data: Path, models: Path, env: dict[str, str], log: Path) -> Any:
    """``uba-api`` on a free loopback port, stopped by its own pid."""
    port = free_port()
    cmd = [str(BIN / "uba-api"), "--host", "127.0.0.1", "--port", str(port), "--data-dir", str(data),
           "--model-dir", str(models), "--no-access-log"]
    with open(log, "wb") as out:
        process = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(url + "/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if process.poll() is not None:
                raise SystemExit(f"uba-api exited:\n{log.read_text()[-2000:]}")
            time.sleep(0.1)
        else:
            raise SystemExit(f"uba-api not ready after 60 s:\n{log.read_text()[-2000:]}")
        yield url
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _answer(interaction: dict[str, Any]) -> str:
    """The status and body of one recorded answer, shortened, for the failure list."""
    response = (interaction or {}).get("response") or {}
    content = response.get("content")
    body = base64.b64decode(content["$base64"]).decode("utf-8", "replace") if isinstance(content, dict) \
        else str(content or "")
    return f"{response.get('status_code')} {body[:300]}"


def read_report(report: Path, result: RunResult) -> None:
    """Cases, failures per check (with the answers) and statuses from schemathesis's ndjson stream."""
    for line in report.read_text().splitlines():
        recorder = (json.loads(line).get("ScenarioFinished") or {}).get("recorder") or {}
        result.generated += len(recorder.get("cases", {}))
        interactions = recorder.get("interactions", {})
        for case_id, checks in recorder.get("checks", {}).items():
            for check in checks:
                if check.get("status") == "failure":
                    result.failures[check["name"]] += 1
                    request = (interactions.get(case_id) or {}).get("request") or {}
                    result.examples.append(f"`{check['name']}` on {request.get('method')} "
                                           f"{request.get('uri', '').split('/', 3)[-1]}: "
                                           f"{_answer(interactions.get(case_id))}")
        for interaction in interactions.values():
            status = ((interaction or {}).get("response") or {}).get("status_code")
            if status is not None:
                result.statuses[str(status)] += 1


def run_schemathesis(label: str, url: str, args: argparse.Namespace, work: Path,
                     headers: list[str]) -> RunResult:
    config = work / "schemathesis.toml"
    config.write_text(SCHEMATHESIS_TOML)
    report = work / f"{label}.ndjson"
    command = [str(BIN / "schemathesis"), "--config-file", str(config), "run", f"{url}/openapi.json",
               "--checks", "all", "--phases", "examples,coverage,fuzzing", "--max-examples",
               str(args.max_examples), "--seed", str(args.seed), "--workers", "2", "--no-shrink",
               "--generation-database", "none", "--request-timeout", "30", "--continue-on-failure",
               "--report", "ndjson", "--report-ndjson-path", str(report), *headers]
    started = time.perf_counter()
    run = subprocess.run(command, capture_output=True, text=True, cwd=work)
    result = RunResult(label, command, time.perf_counter() - started, run.returncode)
    (work / f"{label}.stdout.txt").write_text(run.stdout + run.stderr)
    read_report(report, result)
    return result


def write_markdown(path: Path, results: list[RunResult], info: dict[str, str], command: str,
                   server_5xx: dict[str, int], tracebacks: dict[str, int]) -> None:
    total = sum(r.generated for r in results)
    lines = [
        "# Schemathesis against a real uba-api", "",
        f"Recorded {datetime.now(UTC):%Y-%m-%d %H:%M} UTC by `benchmarks/api_schemathesis.py`.", "",
        "Command:", "", "```", command, "```", "",
        "## Machine", "",
        *[f"- {key}: {value}" for key, value in info.items()], "",
        "## Setup", "",
        "- World: `uba-batch generate` (9 days) + `train` (8 days) + `score --date` (day 9, writes the "
        "snapshot), in a temporary directory; `uba-api` on 127.0.0.1, one worker.",
        "- `schemathesis run --checks all --phases examples,coverage,fuzzing` with a fixed seed; "
        "`negative_data_rejection` also accepts 413 (a body over `api.max_batch` items is refused by count).",
        "- Runs: no keys configured; keys configured and `X-API-Key` sent; keys configured and no key sent.", "",
        "## Results", "",
        "| run | cases | 5xx (not_a_server_error) | response outside schema | request-fidelity failures | "
        "statuses seen | seconds |",
        "|---|---:|---:|---:|---:|---|---:|",
    ]
    for r in results:
        outside = sum(r.failures[c] for c in VERDICT_CHECKS if c != "not_a_server_error")
        fidelity = sum(n for c, n in r.failures.items() if c not in VERDICT_CHECKS)
        statuses = ", ".join(f"{s}: {n}" for s, n in sorted(r.statuses.items()))
        lines.append(f"| {r.label} | {r.generated} | {r.failures['not_a_server_error']} | {outside} | "
                     f"{fidelity} | {statuses} | {r.seconds:.0f} |")
    lines += ["", f"Total cases: {total}. Server log: 5xx answers "
              f"{sum(server_5xx.values())}, tracebacks {sum(tracebacks.values())}.", ""]
    for r in results:
        other = {c: n for c, n in r.failures.items() if c not in VERDICT_CHECKS}
        if other:
            lines.append(f"- {r.label}: request-fidelity failures by check: "
                         + ", ".join(f"`{c}` {n}" for c, n in sorted(other.items())))
            lines += [f"  - {example}" for example in r.examples[:10]]
    lines += ["", "Commands of each run (temporary paths shortened):", ""]
    lines += [f"- {r.label}: `{shlex.join(r.command)}`" for r in results]
    path.write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=40)
    parser.add_argument("--max-examples", type=int, default=220)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--output", type=Path, default=REPO / "benchmarks" / "results" / "api_schemathesis.md")
    args = parser.parse_args()
    info = machine_info("schemathesis", "fastapi", "uvicorn")
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("UBA_")}
    base_env.update(RAY_USAGE_STATS_ENABLED="0", RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0",
                    UBA_MODEL__N_ESTIMATORS="60")
    results: list[RunResult] = []
    server_5xx: dict[str, int] = {}
    tracebacks: dict[str, int] = {}
    with tempfile.TemporaryDirectory(prefix="uba-schemathesis-") as tmp:
        root = Path(tmp)
        data, models = make_world(root, args.users, base_env)
        runs = [("open", base_env, []),
                ("keys, key sent", {**base_env, "UBA_API_KEYS": KEY}, ["-H", f"X-API-Key: {KEY}"]),
                ("keys, no key", {**base_env, "UBA_API_KEYS": KEY}, [])]
        for label, env, headers in runs:
            work = root / label.replace(",", "").replace(" ", "-")
            work.mkdir()
            log = work / "api.log"
            with api_server(data, models, env, log) as url:
                results.append(run_schemathesis(work.name, url, args, work, headers))
                results[-1].label = label
            text = log.read_text()
            server_5xx[label] = sum(1 for line in text.splitlines() if '" 5' in line and "503" not in line)
            tracebacks[label] = text.count("Traceback")
            print(f"{label}: {results[-1].generated} cases, failures {dict(results[-1].failures)}", flush=True)
        for r in results:
            r.command = [part.replace(tmp, "$TMP") for part in r.command]
    command = ".venv/bin/python benchmarks/api_schemathesis.py " + shlex.join(
        a for a in sys.argv[1:])
    write_markdown(args.output, results, info, command, server_5xx, tracebacks)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
