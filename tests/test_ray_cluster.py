"""`score --date` joining a Ray cluster started with `ray start --head` on 127.0.0.1.

The cluster lives in its own process group for the module and is stopped by group id;
no Ray process is ever killed by name. Ray 2.60 needs RAY_AUTH_MODE=token on both the
head and the joining job (the token is shared through ~/.ray/auth_token).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from uba.scoring import ScoreOptions, score_day

RAY = Path(sys.executable).with_name("ray")
UBA = Path(sys.executable).with_name("uba-batch")
REPO = Path(__file__).resolve().parents[1]
LOOPBACK = "127.0.0.1"


def _free(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex((LOOPBACK, port)) != 0


def _ports() -> tuple[int, int, int, int]:
    """Four consecutive free ports above Ray's worker range (10002-19999)."""
    for base in range(26379, 26779, 4):
        if all(_free(base + i) for i in range(4)):
            return base, base + 1, base + 2, base + 3
    raise RuntimeError("no free ports for a test Ray head")


def _cluster_env() -> dict[str, str]:
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
           "RAY_AUTH_MODE": "token"}
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


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A single-node cluster of 2 CPUs on loopback; yields its address."""
    gcs, client, dashboard, agent = _ports()
    log = (tmp_path_factory.mktemp("ray-head") / "head.log").open("wb")
    head = subprocess.Popen(
        [str(RAY), "start", "--head", "--block", f"--port={gcs}", f"--node-ip-address={LOOPBACK}",
         "--num-cpus=2", "--include-dashboard=false", "--disable-usage-stats",
         f"--ray-client-server-port={client}", f"--dashboard-port={dashboard}",
         f"--dashboard-agent-listen-port={agent}"],
        env=_cluster_env(), stdout=log, stderr=log, start_new_session=True)
    address = f"{LOOPBACK}:{gcs}"
    try:
        deadline = time.monotonic() + 90
        while _free(gcs):
            assert head.poll() is None, "ray start --head exited early"
            assert time.monotonic() < deadline, "ray head did not come up"
            time.sleep(0.2)
        yield address
    finally:
        _stop_group(head)
        log.close()
        # `ray start` registers itself as this machine's current cluster; a later plain
        # ray.init() elsewhere would try to join the dead head, so unregister it
        current = Path("/tmp/ray/ray_current_cluster")
        with contextlib.suppress(OSError):
            if current.read_text().strip() == address:
                current.unlink()


def test_score_cli_on_a_ray_start_cluster_matches_local_and_in_process(
        ray_head: str, trained_dataset, scoring_settings, day_output_bytes, tmp_path: Path) -> None:
    day = trained_dataset.score_dates[0]
    out = tmp_path / "cluster"
    result = subprocess.run(
        [str(UBA), "score", "--date", day.isoformat(), "--ray-address", ray_head, "--shards", "3",
         "--data-dir", str(trained_dataset.data_dir), "--model-dir", str(trained_dataset.model_dir),
         "--output-dir", str(out)],
        env=_cluster_env(), cwd=REPO, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr
    manifest = json.loads((out / "runs" / f"event_date={day}" / "manifest.json").read_text())
    execution = manifest["execution"]
    assert execution["mode"] == "cluster" and execution["address"] == ray_head
    assert execution["started_by_job"] is False and execution["cluster_cpus"] == 2
    assert execution["workers"] == 2 and execution["shards"] == 3
    assert manifest["row_conservation"]["ok"] is True

    score_day(scoring_settings(tmp_path / "in-process"), ScoreOptions(day=day, in_process=True))
    assert day_output_bytes(out, day) == day_output_bytes(tmp_path / "in-process", day)


def test_ray_address_from_the_environment_is_honoured(
        ray_head: str, trained_dataset, tmp_path: Path) -> None:
    day = trained_dataset.score_dates[1]
    result = subprocess.run(
        [str(UBA), "score", "--date", day.isoformat(), "--workers", "1",
         "--data-dir", str(trained_dataset.data_dir), "--model-dir", str(trained_dataset.model_dir),
         "--output-dir", str(tmp_path)],
        env={**_cluster_env(), "RAY_ADDRESS": ray_head}, cwd=REPO, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr
    execution = json.loads((tmp_path / "runs" / f"event_date={day}" / "manifest.json").read_text())["execution"]
    assert execution["mode"] == "cluster" and execution["address"] == ray_head and execution["workers"] == 1


def test_an_unreachable_cluster_is_one_line_and_publishes_nothing(trained_dataset, tmp_path: Path) -> None:
    day = trained_dataset.score_dates[0]
    port = next(p for p in range(26900, 27000) if _free(p))
    result = subprocess.run(
        [str(UBA), "score", "--date", day.isoformat(), "--ray-address", f"{LOOPBACK}:{port}",
         "--data-dir", str(trained_dataset.data_dir), "--model-dir", str(trained_dataset.model_dir),
         "--output-dir", str(tmp_path)],
        env=_cluster_env(), cwd=REPO, capture_output=True, text=True, timeout=180)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert f"error: cannot connect to the Ray cluster at {LOOPBACK}:{port}" in result.stderr
    assert not (tmp_path / "scores").exists()
    failures = list((tmp_path / "runs" / f"event_date={day}").glob("failed-*.json"))
    assert len(failures) == 1 and json.loads(failures[0].read_text())["failed_stage"] == "ray_init"
