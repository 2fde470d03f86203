"""What the worker processes of one ``uba-api --workers N`` share: reloads and metrics.

uvicorn's workers are separate processes behind one socket; a request reaches one of
them. Two things must not depend on which:

* ``POST /admin/reload`` reloads the worker that received it, then leaves a reload
  request in the group's folder; every other worker polls that file (one ``stat`` every
  ``RELOAD_POLL_SEC``) and reloads too, so the whole server serves the new bundle within
  about a second. A worker whose reload is refused keeps serving its previous state and
  logs why, as a periodic reload does.
* ``GET /metrics`` adds up every worker's counters and histograms: prometheus_client's
  multiprocess mode, whose files live in the same folder (``PROMETHEUS_MULTIPROC_DIR``).

``uba-api`` makes the folder (a fresh temporary one per server) and names it in the
environment before uvicorn starts the workers; one worker, or an app built in a test,
has no group and nothing here runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import tempfile
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path

from uba.logs import get_logger

GROUP_DIR_ENV = "UBA_API_WORKER_GROUP_DIR"
METRICS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"
RELOAD_REQUEST = "reload-request"
LIVE_GAUGE_FILE = re.compile(r"gauge_live[a-z]*_(\d+)\.db")  # prometheus_client's file names
RELOAD_POLL_SEC = 0.5

log = get_logger("api.workers")


def make_group_dir(env: MutableMapping[str, str]) -> Path:
    """A fresh, empty folder for one server's workers, named in ``env`` for them to find.

    Fresh per server because multiprocess metrics read every file in the folder: files of
    an earlier server would be counted again.
    """
    folder = Path(tempfile.mkdtemp(prefix="uba-api-workers-"))
    (folder / "metrics").mkdir()
    env[GROUP_DIR_ENV] = str(folder)
    env[METRICS_DIR_ENV] = str(folder / "metrics")
    return folder


def remove_group_dir(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)


def group_from_env() -> WorkerGroup | None:
    """The group this worker belongs to, or None when it runs alone."""
    folder = os.environ.get(GROUP_DIR_ENV)
    return WorkerGroup(Path(folder)) if folder else None


@dataclass
class WorkerGroup:
    """This worker's view of the group folder."""

    folder: Path
    seen: str = ""  # the last reload request this worker acted on (or made)
    parent: int = 0  # the uba-api (uvicorn supervisor) process that started this worker
    _task: asyncio.Task[None] | None = field(default=None, repr=False)

    @property
    def request_path(self) -> Path:
        return self.folder / RELOAD_REQUEST

    def current_request(self) -> str:
        try:
            return self.request_path.read_text(encoding="utf-8")
        except OSError:
            return ""

    def announce_reload(self) -> None:
        """Ask every other worker to reload (written whole, then renamed into place).

        Another worker's request this worker's poll has not acted on yet is overwritten
        here; it may name a newer bundle than the one this worker's own reload read
        (that reload began before the bundle landed and ended after the other worker's
        did), so it is not marked seen: the poll then runs one more reload."""
        pending = self.current_request() not in ("", self.seen)
        token = f"{os.getpid()}-{time.time_ns()}"
        staging = self.folder / f".{RELOAD_REQUEST}.{os.getpid()}"
        staging.write_text(token, encoding="utf-8")
        os.replace(staging, self.request_path)
        if not pending:
            self.seen = token

    def start(self, on_request: Callable[[], Awaitable[object]]) -> None:
        """Poll for other workers' reload requests and run ``on_request`` for each new one."""
        self.seen = self.current_request()
        self.parent = os.getppid()
        self._task = asyncio.create_task(self._watch(on_request), name="uba-worker-group-reload")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def orphaned(self) -> bool:
        """True when the uba-api process that started this worker is gone (killed with
        SIGKILL, out of memory): uvicorn's workers do not notice, and kept serving the port
        with nobody to stop them, restart them or remove the group folder."""
        return self.parent != 0 and os.getppid() != self.parent

    def remove_if_last(self) -> None:
        """At the exit of an orphaned worker: remove the group folder once no other worker
        of the group runs (uba-api, which would have removed it, is gone)."""
        metrics = self.folder / "metrics"
        others = live_worker_pids(str(metrics)) - {os.getpid()} if metrics.is_dir() else set()
        if not others:
            remove_group_dir(self.folder)

    async def _watch(self, on_request: Callable[[], Awaitable[object]]) -> None:
        while True:
            await asyncio.sleep(RELOAD_POLL_SEC)
            if self.orphaned():
                log.warning("uba-api (pid %d) that started this worker is gone: stopping this worker", self.parent)
                os.kill(os.getpid(), signal.SIGTERM)  # uvicorn's graceful shutdown, then the lifespan's end
                return
            request = self.current_request()
            if not request or request == self.seen:
                continue
            self.seen = request
            try:
                await on_request()
            except Exception:  # refused or broken: keep serving and watching; the reload logged why
                log.warning("reload requested by another worker (%s) did not complete", request)


def process_is_gone(pid: int) -> bool:
    """True when no process ``pid`` exists any more (a worker killed or crashed), or it is a
    zombie its supervisor has not reaped yet."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # someone else's process: alive
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[:1] == ["Z"]


def live_worker_pids(folder: str) -> set[int]:
    """The pids whose live gauges are in ``folder`` and whose process still runs."""
    pids = {int(found[1]) for found in map(LIVE_GAUGE_FILE.fullmatch, os.listdir(folder)) if found}
    return {pid for pid in pids if pid == os.getpid() or not process_is_gone(pid)}
