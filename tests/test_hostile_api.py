"""Replays the hostile API corpus (tests/hostile/api/) against real uvicorn servers.

Each case is ``<name>.json`` (who to ask and what to send) with ``<name>.expect.json``
(the verdict). For every case: no 5xx, the expected status and field, nothing echoed
that must not be, and no traceback in the server's log. Format: tests/hostile/api/README.md.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import polars as pl
import pytest
from api_world import Server, running_server
from prometheus_client.mmap_dict import MmapedDict, mmap_key
from waiting import wait_until
from worlds import SCORE_DAY, World

from uba import io

CORPUS = Path(__file__).parent / "hostile" / "api"
KEY = "hostile-corpus-key"
CASES = sorted(p.name.removesuffix(".expect.json") for p in CORPUS.glob("*.expect.json"))
# The kinds of abuse the corpus covers (each case's "attack"; README.md says what each means).
ATTACKS = ("hostile_body", "ingest_parity", "key_before_body", "path_disclosure", "cut_connection",
           "worker_lifecycle", "model_reload", "declared_statuses", "hostile_query", "terminal_injection")
_ABSOLUTE_PATH = re.compile(r"(?<![\w.~<-])/[A-Za-z0-9_.-]+/")


def load_case(name: str) -> tuple[dict[str, Any], dict[str, Any]]:
    return (json.loads((CORPUS / f"{name}.json").read_text()),
            json.loads((CORPUS / f"{name}.expect.json").read_text()))


class Servers:
    """The servers the corpus names, each started on first use and stopped at the end."""

    def __init__(self, world: World, root: Path, stack: ExitStack) -> None:
        self.world, self.root, self.stack = world, root, stack
        self.started: dict[str, tuple[Server, World]] = {}

    def get(self, name: str) -> tuple[Server, World]:
        if name not in self.started:
            world, env = self._setup(name)
            flags = (["--workers", "2", "--no-access-log"] if name.startswith("workers") else
                     ["--no-access-log"] if name == "inherited_group" else None)
            server = self.stack.enter_context(running_server(env, self.root / f"{name}.log", uba_api=flags))
            self.started[name] = (server, world)
        return self.started[name]

    def _setup(self, name: str) -> tuple[World, dict[str, str]]:
        own = self.world.copy(self.root / name)
        if name == "open":
            return own, own.env()
        if name in ("keyed", "workers", "workers_killed"):  # workers*: uba-api --workers 2
            return own, own.env(UBA_API_KEYS=KEY)
        if name == "inherited_group":  # the environment names another server's group folder
            folder = self.root / "another-servers-group"
            (folder / "metrics").mkdir(parents=True)
            counts = MmapedDict(str(folder / "metrics" / "counter_1.db"))
            counts.write_value(mmap_key("uba_api_requests_total", "uba_api_requests_total",
                                        ["route", "method", "status"], ["/from-another-server", "POST", "200"],
                                        "HTTP requests by route, method and status code."), 1000.0, 0.0)
            counts.close()
            return own, own.env(UBA_API_WORKER_GROUP_DIR=str(folder),
                                PROMETHEUS_MULTIPROC_DIR=str(folder / "metrics"))
        if name in ("broken_keyed", "open_broken"):  # LATEST swapped for a link to /etc/passwd (or a stand-in)
            target = Path("/etc/passwd")
            if not target.is_file():
                target = self.root / "passwd"
                target.write_text("root:x:0:0:root:/root:/bin/bash\n")
            latest = own.model_dir / "LATEST"
            latest.unlink()
            latest.symlink_to(target)
            return own, (own.env() if name == "open_broken" else own.env(UBA_API_KEYS=KEY))
        raise ValueError(f"unknown server {name!r} in the corpus")


@pytest.fixture(scope="module")
def servers(serving_world: World, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    with ExitStack() as stack:
        yield Servers(serving_world, tmp_path_factory.mktemp("hostile-api"), stack)


def request_body(case: dict[str, Any]) -> bytes | None:
    """The bytes the case sends: literal JSON, text, hex, a repeated unit or a repeated item."""
    if "body" in case:
        return json.dumps(case["body"]).encode()
    if "body_text" in case:
        return case["body_text"].encode()
    if "body_hex" in case:
        return bytes.fromhex(case["body_hex"])
    if "body_repeat" in case:
        spec = case["body_repeat"]
        return (spec["prefix"] + spec["unit"] * spec["count"] + spec["suffix"]).encode()
    if "json_repeat" in case:
        spec = case["json_repeat"]
        return json.dumps({**spec.get("extra", {}), spec["field"]: [spec["item"]] * spec["count"]}).encode()
    return None


def headers_for(case: dict[str, Any]) -> dict[str, str]:
    return {k: (KEY if v == "$KEY" else v) for k, v in case.get("headers", {}).items()}


def status_counts(server: Server) -> dict[str, float]:
    counts: dict[str, float] = {}
    for line in httpx.get(server.url + "/metrics").text.splitlines():
        found = re.match(r'uba_api_requests_total\{.*status="(\d+)"\} (\S+)', line)
        if found:
            counts[found[1]] = counts.get(found[1], 0.0) + float(found[2])
    return counts


def close_mid_body(server: Server, case: dict[str, Any]) -> None:
    """Declare a length, send less, close: the client went away mid-upload."""
    host, port = server.url.removeprefix("http://").split(":")
    sent = request_body(case) or b""
    before = status_counts(server).get("499", 0.0)
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall((f"POST {case['path']} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                      f"Content-Length: {case['declared_length']}\r\n\r\n").encode() + sent)
    wait_until(lambda: status_counts(server).get("499", 0.0) > before, 10, "the server to count the 499")


def served_by_worker(server: Server) -> dict[str, str]:
    """pid -> model version of every ``uba_api_model_info`` series at 1."""
    text = httpx.get(server.url + "/metrics", timeout=10).text
    return {m[2]: m[1] for m in re.finditer(r'uba_api_model_info\{.*model_version="([^"]+)",pid="(\d+)"\} 1\.0', text)}


def kill_a_worker(server: Server) -> int:
    """SIGKILL one worker of this ``--workers 2`` server (no shutdown runs) and wait until
    uvicorn's replacement serves; returns the dead worker's pid."""
    def both_workers_seen() -> bool:
        for _ in range(5):  # fresh connections reach either worker
            httpx.get(server.url + "/health")
        return len(served_by_worker(server)) >= 2

    wait_until(both_workers_seen, 30, "both workers to report uba_api_model_info")
    victim = int(sorted(served_by_worker(server))[0])
    stat = Path(f"/proc/{victim}/stat").read_text()
    assert int(stat.rsplit(")", 1)[1].split()[1]) == server.process.pid  # this server's own worker
    os.kill(victim, signal.SIGKILL)
    wait_until(lambda: len(set(served_by_worker(server)) - {str(victim)}) >= 2
               and f'pid="{victim}"' not in httpx.get(server.url + "/metrics", timeout=10).text,
               30, f"a replacement worker serving and every series of the dead worker {victim} gone")
    return victim


def kill_uba_api(server: Server) -> None:
    """SIGKILL the uba-api process itself (uvicorn's supervisor: no cleanup runs); its
    workers must stop by themselves and the last one remove the group folder."""
    def both_workers_seen() -> bool:
        httpx.get(server.url + "/health")
        return len(served_by_worker(server)) >= 2

    wait_until(both_workers_seen, 30, "both workers to report uba_api_model_info")
    workers = [int(pid) for pid in served_by_worker(server)]
    environ = Path(f"/proc/{workers[0]}/environ").read_bytes().split(b"\0")
    (folder,) = [item.split(b"=", 1)[1].decode() for item in environ if item.startswith(b"UBA_API_WORKER_GROUP_DIR=")]
    server.process.kill()
    server.process.wait()

    def running(pid: int) -> bool:
        try:
            return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
        except OSError:
            return False
    try:
        wait_until(lambda: not any(running(pid) for pid in workers), 30, "the workers to stop after uba-api died")
    finally:
        for pid in workers:  # this test's own processes, whatever happened
            if running(pid):
                os.kill(pid, signal.SIGKILL)
    wait_until(lambda: not Path(folder).exists(), 30, f"the last worker to remove {folder}")


def rewrite_snapshot(world: World) -> None:
    """What ``score --date D`` does to the snapshot as of D: a new file, same date."""
    found = io.latest_baseline_snapshot(world.data_dir)
    assert found is not None
    frame = io.read_baseline_snapshot(found[1])
    io.write_baseline_snapshot(frame.filter(pl.col("user_id") != frame["user_id"].sort()[-1]),
                               world.data_dir, SCORE_DAY)


def check_response(response: httpx.Response, expect: dict[str, Any]) -> None:
    # no 5xx, except /ready's documented 503 "not ready" where the case expects exactly that
    assert response.status_code < 500 or response.status_code == expect["status"] == 503, response.text[:500]
    assert response.status_code == expect["status"], response.text[:500]
    text = response.text
    if "field" in expect:
        fields = [e["field"] for e in response.json()["detail"]]
        assert expect["field"] in fields, fields
    if "message" in expect:
        assert expect["message"] in text, text[:500]
    for needle in expect.get("not_in_body", []):
        assert needle not in text, text[:500]
    if expect.get("no_absolute_paths"):
        assert not _ABSOLUTE_PATH.search(text), text[:500]
    for key, value in expect.get("json", {}).items():
        assert response.json()[key] == value, text[:500]
    for key, value in expect.get("json_contains_text", {}).items():
        assert value in str(response.json()[key]), text[:500]
    for path, statuses in expect.get("openapi_responses", {}).items():
        declared = set(response.json()["paths"][path]["post"]["responses"])
        assert set(statuses) <= declared, (path, sorted(declared))


@pytest.mark.parametrize("name", CASES)
def test_hostile_api_case(servers: Servers, name: str) -> None:
    case, expect = load_case(name)
    server, world = servers.get(case["server"])
    action = case.get("action", "request")
    if action == "close_mid_body":
        close_mid_body(server, case)
    elif action == "kill_uba_api_then_request":
        kill_uba_api(server)
        with pytest.raises(httpx.ConnectError):  # nobody serves the port any more
            httpx.request(case["method"], server.url + case["path"], timeout=5)
        assert "Traceback" not in server.log.read_text()
        return
    else:
        if action == "rewrite_snapshot_then_request":
            rewrite_snapshot(world)
        if action == "kill_worker_then_request":
            expect = {**expect, "not_in_body": [*expect.get("not_in_body", []),
                                                f'pid="{kill_a_worker(server)}"']}
        response = httpx.request(case["method"], server.url + case["path"], content=request_body(case),
                                 headers=headers_for(case), timeout=60)
        check_response(response, expect)
    counts = status_counts(server)
    for status in expect.get("metrics_status_present", []):
        assert counts.get(status, 0) >= 1, counts
    for status in expect.get("metrics_status_absent", []):
        assert status not in counts, counts
    assert not any(code.startswith("5") and code != "503" for code in counts), counts
    if expect.get("no_traceback", True):
        assert "Traceback" not in server.log.read_text()
    if expect.get("no_warning"):
        assert "Warning" not in server.log.read_text()


def test_the_corpus_is_complete() -> None:
    """Every case has its verdict and names a known attack kind, and every kind has a case."""
    requests = {p.name.removesuffix(".json") for p in CORPUS.glob("*.json") if not p.name.endswith(".expect.json")}
    assert requests == set(CASES) and len(CASES) >= 20
    attacks = [load_case(name)[0]["attack"] for name in CASES]
    assert set(attacks) == set(ATTACKS), "a case names an unknown kind, or a kind has no case (README.md)"
