"""``uba-api --workers N`` on real servers: what the workers share when one of them dies."""

from __future__ import annotations

import contextlib
import os
import re
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import pytest
from api_world import SEED_PAYLOAD, running_server
from waiting import holds_throughout, wait_until, wait_until_async
from worlds import World

from uba.api.workers import RELOAD_POLL_SEC


@pytest.fixture
def own_world(shared_world: World, tmp_path: Path) -> World:
    return shared_world.copy(tmp_path / "world")


def served_by_worker(metrics_text: str) -> dict[str, str]:
    """pid -> the model version that worker reports with value 1 (``uba_api_model_info``)."""
    served = {}
    for line in metrics_text.splitlines():
        found = re.match(r'uba_api_model_info\{.*model_version="([^"]+)",pid="(\d+)"\} 1\.0$', line)
        if found:
            served[found.group(2)] = found.group(1)
    return served


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

        wait_until(lambda: len(served_by_worker(scrape())) == 2, 20, "both workers in uba_api_model_info")
        workers = served_by_worker(scrape())
        victim = int(sorted(workers)[0])
        assert parent_of(victim) == server.process.pid  # a worker of this server, started by this test
        os.kill(victim, signal.SIGKILL)

        # uvicorn starts a replacement under a new pid; the dead one must leave the scrape
        def replaced() -> bool:
            post_fresh()
            served = served_by_worker(scrape())
            return len(set(served) - {str(victim)}) == 2
        wait_until(replaced, 30, "a replacement worker")
        wait_until(lambda: f'pid="{victim}"' not in scrape(), 5, f"the dead worker {victim}'s series gone")
        text = scrape()
        assert re.search(r"^uba_api_model_loaded 1\.0$", text, re.M), text
        assert len(served_by_worker(text)) == 2 and set(served_by_worker(text).values()) == {own_world.version}
        assert httpx.post(server.url + "/admin/reload", timeout=30).status_code == 200
        wait_until(lambda: "reloaded: model" in (tmp_path / "api.log").read_text(), 5, "a reloaded line")
    log = (tmp_path / "api.log").read_text()
    assert "Traceback" not in log
    assert "UserWarning" not in log  # prometheus_client's 'Clearing labels has not been implemented' at a reload


def running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def group_folder_of(pid: int) -> Path:
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    (value,) = [item.split(b"=", 1)[1] for item in environ if item.startswith(b"UBA_API_WORKER_GROUP_DIR=")]
    return Path(value.decode())


def test_workers_stop_and_remove_their_folder_when_uba_api_is_killed(own_world: World, tmp_path: Path) -> None:
    """uba-api (uvicorn's supervisor) killed with SIGKILL runs no cleanup: its workers,
    reparented, kept serving the port for good (an old model, nobody to restart or stop
    them, the port taken from the next uba-api) and the shared folder stayed in /tmp.
    Now each worker sees its parent gone within a poll (0.5 s), shuts down gracefully, and
    the last one removes the folder."""
    flags = ["--workers", "2", "--no-access-log"]
    with running_server(own_world.env(), tmp_path / "api.log", uba_api=flags) as server:
        wait_until(lambda: len(served_by_worker(httpx.get(server.url + "/metrics").text)) == 2, 20,
                   "both workers in uba_api_model_info")
        workers = [int(pid) for pid in served_by_worker(httpx.get(server.url + "/metrics").text)]
        assert all(parent_of(pid) == server.process.pid for pid in workers)
        folder = group_folder_of(workers[0])
        assert folder.is_dir()
        server.process.kill()
        server.process.wait()
        try:
            wait_until(lambda: not any(running(pid) for pid in workers), 15, "the workers to stop")
        finally:
            for pid in workers:  # this test's own processes, whatever happened
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        with pytest.raises(httpx.HTTPError):
            httpx.get(server.url + "/health", timeout=2)
        wait_until(lambda: not folder.exists(), 5, "the group folder removed")
    log = (tmp_path / "api.log").read_text()
    assert "Traceback" not in log and "that started this worker is gone" in log


def test_single_worker_servers_ignore_a_group_folder_in_their_environment(own_world: World, tmp_path: Path) -> None:
    """A one-worker uba-api took the group variables of whatever environment started it
    (``PROMETHEUS_MULTIPROC_DIR`` set for other programs, another server's
    ``UBA_API_WORKER_GROUP_DIR``): two servers started from one environment added up each
    other's counts in /metrics, reloaded on each other's requests, and a one-worker server
    whose launching shell exited took itself for an orphaned worker and stopped. Each
    server's group is its own: none for one worker."""
    shared = tmp_path / "shared"
    (shared / "metrics").mkdir(parents=True)
    env = own_world.env(UBA_API_WORKER_GROUP_DIR=str(shared), PROMETHEUS_MULTIPROC_DIR=str(shared / "metrics"))
    flags = ["--no-access-log"]
    with running_server(env, tmp_path / "a.log", uba_api=flags) as a, \
            running_server(env, tmp_path / "b.log", uba_api=flags) as b:
        for _ in range(5):
            assert httpx.post(a.url + "/predict", json=SEED_PAYLOAD).status_code == 200
        assert httpx.post(a.url + "/admin/reload").status_code == 200
        # watched for three polls of a group folder (had b joined one): none of a's traffic or reloads
        holds_throughout(lambda: 'route="/predict"' not in httpx.get(b.url + "/metrics").text
                         and "reloaded: model" not in (tmp_path / "b.log").read_text(),
                         3 * RELOAD_POLL_SEC, "b apart from a's counts and reloads")
        assert a.process.poll() is None and b.process.poll() is None
    assert not any(shared.rglob("*.db"))


def test_a_reload_request_overwritten_before_the_poll_still_reloads(tmp_path: Path) -> None:
    """Two workers' views of one real group folder. Worker A reloads (a new bundle) and
    announces; before B's next poll (every 0.5 s), B's own reload, which read LATEST
    before that bundle landed, ends and announces too, replacing A's request. B marked
    its own request seen and never acted on A's: B kept serving the old bundle. Now B's
    poll runs one more reload."""
    import asyncio

    from uba.api.workers import WorkerGroup

    def _seen_by_b(b: WorkerGroup, count: Callable[[], int]) -> Callable[[], Awaitable[bool]]:
        async def acted() -> bool:  # B reloaded and holds the current request as seen: no reload is owed
            return count() >= 1 and b.seen == b.current_request()
        return acted

    async def scenario() -> int:
        reloads = 0

        async def reload_b() -> None:
            nonlocal reloads
            reloads += 1

        a, b = WorkerGroup(tmp_path), WorkerGroup(tmp_path)
        b.start(reload_b)
        try:
            a.announce_reload()  # A: reloaded the new bundle
            b.announce_reload()  # B: its own (older) reload ends before its poll saw A's request
            await wait_until_async(_seen_by_b(b, lambda: reloads), 5, "B's poll to act on A's request")
        finally:
            await b.stop()
        return reloads

    assert asyncio.run(scenario()) == 1
