"""``uba-api --workers N`` on real servers: what the workers share when one of them dies."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from test_api_world import SEED_PAYLOAD, World, running_server, shared_world


@pytest.fixture
def own_world(tmp_path_factory: pytest.TempPathFactory, tmp_path: Path) -> World:
    return shared_world(tmp_path_factory).copy(tmp_path / "world")


def served_by_worker(metrics_text: str) -> dict[str, str]:
    """pid -> the model version that worker reports with value 1 (``uba_api_model_info``)."""
    served = {}
    for line in metrics_text.splitlines():
        found = re.match(r'uba_api_model_info\{.*model_version="([^"]+)",pid="(\d+)"\} 1\.0$', line)
        if found:
            served[found.group(2)] = found.group(1)
    return served


def poll(check: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.1)
    return False


def parent_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def test_a_killed_worker_leaves_no_series_behind_in_metrics(own_world: World, tmp_path: Path) -> None:
    """A worker killed with SIGKILL never runs its shutdown, so its live-gauge files stayed
    in the shared folder: ``uba_api_model_info`` kept a series for the dead pid, still 1 for
    the version it served even after every live worker reloaded another (a lagging worker
    that does not exist), and each restart added one more. Now a scrape drops the gauges of
    workers that are gone; the counters keep every request they answered."""
    flags = ["--workers", "2", "--no-access-log"]
    with running_server(own_world.env(), tmp_path / "api.log", uba_api=flags) as server:
        def scrape() -> str:
            return httpx.get(server.url + "/metrics", timeout=10).text

        def post_fresh() -> None:  # a fresh connection each: the kernel hands them to either worker
            with contextlib.suppress(httpx.HTTPError):  # the killed worker's connection
                httpx.post(server.url + "/predict", json=SEED_PAYLOAD, timeout=10)

        assert poll(lambda: len(served_by_worker(scrape())) == 2, timeout=20)
        workers = served_by_worker(scrape())
        victim = int(sorted(workers)[0])
        assert parent_of(victim) == server.process.pid  # a worker of this server, started by this test
        os.kill(victim, signal.SIGKILL)

        # uvicorn starts a replacement under a new pid; the dead one must leave the scrape
        def replaced() -> bool:
            post_fresh()
            served = served_by_worker(scrape())
            return len(set(served) - {str(victim)}) == 2
        assert poll(replaced, timeout=30), scrape()
        assert poll(lambda: f'pid="{victim}"' not in scrape(), timeout=5), scrape()
        text = scrape()
        assert re.search(r"^uba_api_model_loaded 1\.0$", text, re.M), text
        assert len(served_by_worker(text)) == 2 and set(served_by_worker(text).values()) == {own_world.version}
    assert "Traceback" not in (tmp_path / "api.log").read_text()
