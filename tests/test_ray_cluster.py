"""`score --date` joining a two-node Ray cluster (`ray start --head` + `ray start --address`) on 127.0.0.1.

The cluster lives in its own process group for the module and is stopped by group id;
no Ray process is ever killed by name. Ray 2.60 needs RAY_AUTH_MODE=token on both the
head and the joining job (the token is shared through RAY_AUTH_TOKEN, generated per run).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from waiting import wait_until

from uba.scoring.driver import ScoreOptions, score_day

RAY = Path(sys.executable).with_name("ray")
UBA = Path(sys.executable).with_name("uba-batch")
REPO = Path(__file__).resolve().parents[1]
JOIN_NODE = Path(__file__).with_name("ray_start_node.py")
LOOPBACK = "127.0.0.1"


def _free(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex((LOOPBACK, port)) != 0


def _ports(count: int, after: int = 26378) -> list[int]:
    """``count`` consecutive free ports above Ray's worker range (10002-19999), from ``after + 1``.
    Free now is no promise (Ray's head needs fixed ports it is told, not port 0): the
    cluster fixture retries on the next range when a node cannot bind."""
    for base in range(after + 1, 27379, count):
        if all(_free(base + i) for i in range(count)):
            return list(range(base, base + count))
    raise RuntimeError("no free ports for a test Ray cluster")


class PortTakenError(RuntimeError):
    """A `ray start` exited while coming up: most likely one of its fixed ports was taken."""


def _node_ports(ports: list[int], worker_range: tuple[int, int]) -> list[str]:
    """Distinct ports for one node's raylet, object manager, agents and workers, so two
    nodes can share one machine."""
    manager, objects, agent_grpc, agent_http, metrics, runtime_env = ports
    return [f"--node-manager-port={manager}", f"--object-manager-port={objects}",
            f"--dashboard-agent-grpc-port={agent_grpc}", f"--dashboard-agent-listen-port={agent_http}",
            f"--metrics-export-port={metrics}", f"--runtime-env-agent-port={runtime_env}",
            f"--min-worker-port={worker_range[0]}", f"--max-worker-port={worker_range[1]}"]


def _wait_for_nodes(address: str, count: int, processes: list[subprocess.Popen[bytes]]) -> None:
    """Wait until ``count`` nodes are alive (asked through the Ray CLI, not a driver)."""
    def reached() -> bool:
        for process in processes:
            if process.poll() is not None:
                raise PortTakenError("a `ray start` exited early")
        status = subprocess.run([str(RAY), "status", f"--address={address}"], env=_cluster_env(),
                                capture_output=True, text=True, timeout=60)
        return status.returncode == 0 and status.stdout.count("node_") >= count

    wait_until(reached, 120, f"the cluster at {address} to reach {count} nodes", interval=1)


@functools.cache
def _cluster_token() -> str:
    """The cluster's auth token, shared by environment: a fresh machine (CI) has no
    ~/.ray/auth_token, and `ray start --head` with token auth refuses to start without one."""
    return secrets.token_hex(32)


def _cluster_env() -> dict[str, str]:
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
           "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": _cluster_token()}
    env.pop("RAY_ADDRESS", None)
    return env


def _stop_group(process: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=2)
    # `ray start --block` may leave its children shutting down; make sure the group is gone
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def _start_cluster(ports: list[int], folder: Path, processes: list[subprocess.Popen[bytes]]) -> str:
    """Start the head, then the second node, on these fixed ports (appended to ``processes``
    as they start); returns the head's address once both nodes are alive."""
    gcs, client, dashboard = ports[:3]
    address = f"{LOOPBACK}:{gcs}"
    common = [f"--node-ip-address={LOOPBACK}", "--num-cpus=1", "--block", "--disable-usage-stats"]
    with (folder / "head.log").open("ab") as log:
        processes.append(subprocess.Popen(
            [str(RAY), "start", "--head", f"--port={gcs}", "--include-dashboard=false",
             f"--ray-client-server-port={client}", f"--dashboard-port={dashboard}", *common,
             *_node_ports(ports[3:9], (11000, 11999))],
            env=_cluster_env(), stdout=log, stderr=log, start_new_session=True))
    head = processes[0]

    def head_listens() -> bool:
        if head.poll() is not None:
            raise PortTakenError(f"ray start --head exited early: {(folder / 'head.log').read_text()[-2000:]}")
        return not _free(gcs)

    wait_until(head_listens, 90, f"the ray head to listen on {address}", interval=0.2)
    with (folder / "node.log").open("ab") as log:
        processes.append(subprocess.Popen(  # `ray start --address`, kept on loopback (see the script)
            [sys.executable, str(JOIN_NODE), f"--address={address}", *common,
             *_node_ports(ports[9:15], (12000, 12999))],
            env=_cluster_env(), stdout=log, stderr=log, start_new_session=True))
    _wait_for_nodes(address, 2, processes)
    return address


def _forget_cluster(address: str) -> None:
    """`ray start` registers itself as this machine's current cluster; a later plain
    ray.init() elsewhere would try to join the dead head, so unregister it."""
    current = Path("/tmp/ray/ray_current_cluster")
    with contextlib.suppress(OSError):
        if current.read_text().strip() == address:
            current.unlink()


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A two-node cluster on loopback: a head and a second node, one CPU each, each with its
    own raylet, object store and port ranges; yields the head's address. Ray takes fixed
    ports, so a start that loses one of them to another program is retried on the next range."""
    folder = tmp_path_factory.mktemp("ray-cluster")
    after = 26378
    for attempt in range(3):
        ports = _ports(16, after)
        processes: list[subprocess.Popen[bytes]] = []
        try:
            address = _start_cluster(ports, folder, processes)
        except PortTakenError:
            for process in reversed(processes):
                _stop_group(process)
            _forget_cluster(f"{LOOPBACK}:{ports[0]}")
            if attempt == 2:
                raise
            after = ports[-1]
            continue
        except BaseException:
            for process in reversed(processes):
                _stop_group(process)
            raise
        try:
            yield address
        finally:
            for process in reversed(processes):
                _stop_group(process)
            _forget_cluster(address)
        return


def test_score_cli_on_a_ray_start_cluster_matches_local_and_in_process(
        ray_head: str, shared_world, scoring_settings, day_output_bytes, tmp_path: Path) -> None:
    day = shared_world.score_dates[0]
    out = tmp_path / "cluster"
    result = subprocess.run(
        [str(UBA), "score", "--date", day.isoformat(), "--ray-address", ray_head,
         "--data-dir", str(shared_world.data_dir), "--model-dir", str(shared_world.model_dir),
         "--output-dir", str(out)],
        # a given address is used whatever the day's size: ray.min_rows_for_ray is for the embedded Ray
        env={**_cluster_env(), "UBA_SCORING__CHUNK_ROWS": "60", "UBA_RAY__MIN_ROWS_FOR_RAY": "10000000"},
        cwd=REPO, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr
    manifest = json.loads((out / "runs" / f"event_date={day}" / "manifest.json").read_text())
    execution = manifest["execution"]
    assert execution["mode"] == "cluster" and execution["address"] == ray_head
    assert execution["started_by_job"] is False and execution["cluster_cpus"] == 2
    assert execution["nodes"] == 2 and execution["workers"] == 2 and execution["shards"] >= 4
    assert manifest["row_conservation"]["ok"] is True
    # the shards ran on both nodes, each node fetched the shared inputs for its own workers
    records = execution["shard_records"]
    assert len(records) == execution["shards"]
    assert len({r["node_id"] for r in records}) == 2, [r["node_id"] for r in records]
    assert {r["node_id"] for r in records if r["fetched_inputs"]} == {r["node_id"] for r in records}

    score_day(scoring_settings(tmp_path / "in-process", scoring={"chunk_rows": 60}),
              ScoreOptions(day=day, in_process=True))
    assert day_output_bytes(out, day) == day_output_bytes(tmp_path / "in-process", day)


def test_ray_address_from_the_environment_is_honoured(
        ray_head: str, shared_world, tmp_path: Path) -> None:
    day = shared_world.score_dates[1]
    result = subprocess.run(
        [str(UBA), "score", "--date", day.isoformat(), "--workers", "1",
         "--data-dir", str(shared_world.data_dir), "--model-dir", str(shared_world.model_dir),
         "--output-dir", str(tmp_path)],
        env={**_cluster_env(), "RAY_ADDRESS": ray_head}, cwd=REPO, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr
    execution = json.loads((tmp_path / "runs" / f"event_date={day}" / "manifest.json").read_text())["execution"]
    assert execution["mode"] == "cluster" and execution["address"] == ray_head and execution["workers"] == 1


def test_an_unreachable_cluster_is_one_line_and_publishes_nothing(shared_world, tmp_path: Path) -> None:
    day = shared_world.score_dates[0]
    port = next(p for p in range(26900, 27000) if _free(p))
    result = subprocess.run(
        [str(UBA), "score", "--date", day.isoformat(), "--ray-address", f"{LOOPBACK}:{port}",
         "--data-dir", str(shared_world.data_dir), "--model-dir", str(shared_world.model_dir),
         "--output-dir", str(tmp_path)],
        env=_cluster_env(), cwd=REPO, capture_output=True, text=True, timeout=180)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert f"error: cannot connect to the Ray cluster at {LOOPBACK}:{port}" in result.stderr
    assert not (tmp_path / "scores").exists()
    failures = list((tmp_path / "runs" / f"event_date={day}").glob("failed-*.json"))
    assert len(failures) == 1 and json.loads(failures[0].read_text())["failed_stage"] == "ray_init"


WORKER_THREADS = """
import json, sys
import ray
from uba.scoring.ray_backend import RayRuntime
runtime = RayRuntime(sys.argv[1], None, 2)
runtime.start()
warm = ray.get(runtime.warm_up())
print(json.dumps({"warm": warm, "job_runtime_env": ray.get_runtime_context().runtime_env}))
"""


def test_cluster_workers_run_one_polars_thread_per_task_without_a_runtime_env(ray_head: str) -> None:
    """Each task holds one CPU, so Polars in a worker gets one thread (two shard tasks on a
    node of two CPUs ran four busy threads otherwise). The cap is set by the task before
    Polars is imported, not by a job runtime_env: one would make Ray start every worker
    through its setup_worker process, a second interpreter start per worker per run."""
    result = subprocess.run([sys.executable, "-c", WORKER_THREADS, ray_head], env=_cluster_env(),
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert len(report["warm"]) == 2 and all(threads == 1 for _, threads in report["warm"]), report
    assert not report["job_runtime_env"], report
