"""Opportunistic micro-batching of single-event /predict requests.

Scoring one event costs almost the same as scoring a few hundred: the time goes into
running the feature, reason and forest code at all, not into the rows. So concurrent
``/predict`` requests are queued and one scoring thread takes *everything waiting* as
one frame. Nothing ever waits on purpose: a lone request is scored at once; under load,
requests that arrive while a batch is being scored form the next batch. Scoring runs
off the event loop, which stays free to accept connections.

Each queued event carries the :class:`ModelState` its request started with; events of
different states (a reload happened in between) are scored in separate groups, so a
request is always answered by the state it began with.
"""

from __future__ import annotations

import asyncio
import contextlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from uba.api.inference import ScoringEvent, ScoringResult, score_events
from uba.api.metrics import ApiMetrics
from uba.api.state import ModelState

MAX_COALESCED_EVENTS = 256


@dataclass(frozen=True, slots=True)
class _Pending:
    state: ModelState
    event: ScoringEvent
    future: asyncio.Future[tuple[ScoringResult, int]]


class ScoringBatcher:
    """One queue and one scoring thread per app (per worker process)."""

    def __init__(self, metrics: ApiMetrics, max_reasons: int, max_events: int = MAX_COALESCED_EVENTS) -> None:
        self.metrics = metrics
        self.max_reasons = max_reasons
        self.max_events = max_events
        self._queue: asyncio.Queue[_Pending] | None = None
        self._task: asyncio.Task[None] | None = None
        self._executor: ThreadPoolExecutor | None = None

    async def start(self) -> None:
        self._queue = asyncio.Queue()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="uba-score")
        self._task = asyncio.create_task(self._run(), name="uba-scoring-batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._queue is not None:
            while not self._queue.empty():
                pending = self._queue.get_nowait()
                if not pending.future.done():
                    pending.future.set_exception(RuntimeError("server shutting down"))
        if self._executor is not None:
            self._executor.shutdown(wait=True)

    async def score(self, state: ModelState, event: ScoringEvent) -> tuple[ScoringResult, int]:
        """The result frame this event was scored in, and its row in it."""
        if self._queue is None:
            raise RuntimeError("scoring batcher is not running (app lifespan not started)")
        future: asyncio.Future[tuple[ScoringResult, int]] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Pending(state, event, future))
        return await future

    def _take_waiting(self, first: _Pending) -> list[_Pending]:
        assert self._queue is not None
        batch = [first]
        while len(batch) < self.max_events and not self._queue.empty():
            batch.append(self._queue.get_nowait())
        return batch

    async def _run(self) -> None:
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        while True:
            batch = self._take_waiting(await self._queue.get())
            groups: dict[int, list[_Pending]] = {}
            for pending in batch:
                if not pending.future.done():  # a client that went away is skipped
                    groups.setdefault(id(pending.state), []).append(pending)
            for items in groups.values():
                await self._score_group(loop, items)

    async def _score_group(self, loop: asyncio.AbstractEventLoop, items: list[_Pending]) -> None:
        state = items[0].state
        try:
            result = await loop.run_in_executor(
                self._executor, score_events, state, [p.event for p in items], self.max_reasons
            )
        except Exception as exc:  # answered as a 500 by the request that waits on it
            for pending in items:
                if not pending.future.done():
                    pending.future.set_exception(exc)
            return
        self.metrics.record_scores(result.known_user, int(result.flags.sum()))
        for row, pending in enumerate(items):
            if not pending.future.done():
                pending.future.set_result((result, row))
