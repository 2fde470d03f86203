"""Reloading the served model: on request (``POST /admin/reload``) and periodically.

Both go through :func:`reload_runtime`, so a periodic reload is exactly an admin
reload: the new bundle + snapshot are loaded off to the side, probed and swapped in
with one assignment, and a refused one leaves the old state serving. The periodic loop
(``api.reload_interval_sec`` > 0) exists because a reload request through a load
balancer reaches one worker of one pod; a loop in every worker moves them all to the
nightly snapshot and the weekly bundle without a restart. It first compares the
newest bundle version, snapshot date and file and suppression-rule parts with what is served
(a pointer read and two directory listings), so an unchanged night costs nothing, and
a rule an analyst adds or removes reaches the API within one interval.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import date

from fastapi.concurrency import run_in_threadpool

from uba import io
from uba.api.deps import Runtime
from uba.api.model_state import ModelState, RulesKey
from uba.api.state import rules_key, settle_heap, snapshot_stamp
from uba.errors import UserError
from uba.logs import get_logger
from uba.model.bundle import latest_version

log = get_logger("api.reload")

ServedKey = tuple[str, date, tuple[int, ...], RulesKey]
# Long enough for the admin route and requests in flight to drop the previous state, so
# what the young collection finds then is the reload's own garbage (uba.api.state.settle_heap).
SETTLE_AFTER_RELOAD_SEC = 1.0
_settling: set[asyncio.Task[None]] = set()


async def _settle_later(delay: float) -> None:
    await asyncio.sleep(delay)
    settle_heap(full=False)  # milliseconds, on the loop: no thread hop needed


def schedule_settle(delay: float = SETTLE_AFTER_RELOAD_SEC) -> None:
    """Settle the heap ``delay`` seconds from now (the task is kept until it ends)."""
    task = asyncio.create_task(_settle_later(delay), name="uba-settle-heap")
    _settling.add(task)
    task.add_done_callback(_settling.discard)


async def reload_runtime(runtime: Runtime, risk: bool = True) -> tuple[ModelState | None, ModelState]:
    """Load the newest bundle + snapshot and swap them in; raises UserError when refused
    (the previous state keeps serving). Counts the attempt and updates the model metrics.
    Entity risk is reloaded first (``risk``; the periodic check has just refreshed it
    itself) and whatever happens to the model: new risk days are served even while a
    bundle is refused."""
    if risk:
        await run_in_threadpool(runtime.risk.load, runtime.settings)
    try:
        previous, fresh = await run_in_threadpool(runtime.holder.reload, runtime.settings)
    except UserError as exc:
        runtime.metrics.reloads.labels(outcome="refused").inc()
        log.warning("reload refused: %s", exc)
        raise
    runtime.metrics.reloads.labels(outcome="ok").inc()
    schedule_settle()
    runtime.metrics.set_model(fresh.version, fresh.baselines.as_of.isoformat())
    log.info("reloaded: model %s, baselines as of %s", fresh.version, fresh.baselines.as_of)
    return previous, fresh


def served_key(state: ModelState | None) -> ServedKey | None:
    """What a state was loaded from: bundle version, snapshot date and file, rule parts."""
    if state is None:
        return None
    return state.version, state.baselines.as_of, state.baselines.stamp, state.rules_key


def newest_key(runtime: Runtime) -> ServedKey | None:
    """(LATEST bundle version, newest snapshot date and file, rule parts) on disk, or None
    while the bundle or the snapshot is missing."""
    paths = runtime.settings.paths
    version = latest_version(paths.model_dir) if paths.model_dir.is_dir() else None
    snapshot = io.latest_baseline_snapshot(paths.data_dir)
    if version is None or snapshot is None:
        return None
    return version, snapshot[0], snapshot_stamp(snapshot[1]), rules_key(paths.data_dir)


class PeriodicReloader:
    """Reloads every ``interval`` seconds when the newest pair on disk differs from the served one.

    A refused pair is remembered and not retried until the bundle or snapshot on disk
    changes again, so a broken bundle is logged once, not every interval.
    """

    def __init__(self, runtime: Runtime, interval: float) -> None:
        self.runtime = runtime
        self.interval = interval
        self.refused: ServedKey | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="uba-periodic-reload")
        log.info("checking for a newer bundle or snapshot every %gs", self.interval)

    async def stop(self) -> None:
        if self._task is None:
            return
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    async def check_once(self) -> bool:
        """One check; True when a new state was swapped in."""
        try:
            newest = await run_in_threadpool(newest_key, self.runtime)
        except UserError as exc:  # e.g. an unreadable LATEST pointer: keep serving, say why
            log.warning("periodic reload: %s", exc)
            return False
        # entity risk is read when its files changed, not again after a load that met unreadable ones
        await run_in_threadpool(self.runtime.risk.refresh, self.runtime.settings)
        if newest is None or newest in (served_key(self.runtime.holder.current), self.refused):
            return False
        try:
            await reload_runtime(self.runtime, risk=False)
        except UserError:
            self.refused = newest
            return False
        self.refused = None
        return True

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.check_once()
            except Exception:  # a bug here must not end the loop: keep serving, log it
                log.exception("periodic reload failed unexpectedly")
