"""Coalescing of concurrent single-event /predict requests, on the event loop, only when
they overlap.

Scoring an event is array arithmetic over the compiled snapshot (~0.05 ms), so it runs on
the event loop itself: a thread hop would cost more than the work. Requests that overlap
are scored together, because scoring a few dozen events costs little more than scoring
one; over HTTP at 16 connections that gave 1.7-2x the requests/s of scoring each alone,
while the one yield it takes cost a lone caller 12-21% (``benchmarks/results``). So the
batcher has two modes:

- **lone** (at start, and after ``LONE_DRAINS_BEFORE_INLINE`` coalescing passes in a row
  found nothing to coalesce): with no drain pending and no other callback ready on the
  loop, the event is scored at once, inline, without yielding. Nobody could have joined:
  a request whose data arrives later is parsed by a callback and its task runs one loop
  pass after that, so only tasks already in the loop's ready queue can join a pass;
- **busy** (a pass coalesced more than one event): every request coalesces. Under load a
  yield also lets more requests accumulate for the next pass (the ready-queue test alone,
  which scores a request inline whenever it happens to be alone in its loop pass, gave
  0.85-0.98x the requests/s of always coalescing at 16 connections).

Coalescing: the event is queued and, if no drain is pending, its request becomes the one
that drains: it yields to the loop once (``asyncio.sleep(0)``), which runs the ready
callbacks (other requests parsed in the same loop pass, which queue their events and wait
on a future), then scores everything queued in one vectorised pass and takes its own
answer directly. If that request is cancelled while it yields, a drain is scheduled for
the others.

The ready queue is asyncio's own loop's ``_ready`` (the loop uvicorn runs when uvloop is
not installed); a loop without it (uvloop) is treated as always having work ready, so
every request takes the coalescing path, which is correct there, only a yield dearer.

Each queued event carries the :class:`ModelState` its request started with; events of
different states (a reload happened in between) are scored in separate groups, so a
request is always answered by the state it began with.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import numpy as np

from uba.api.inference import ScoringEvent, ScoringResult, score_events
from uba.api.metrics import ApiMetrics
from uba.api.model_state import ModelState

MAX_COALESCED_EVENTS = 256
# Coalescing passes in a row that found only their own event before a lone request is
# scored inline again: a short lull under load does not drop the batcher out of busy mode.
LONE_DRAINS_BEFORE_INLINE = 16


@dataclass(frozen=True, slots=True)
class _Pending:
    state: ModelState
    event: ScoringEvent
    future: asyncio.Future[tuple[ScoringResult, int]]


class ScoringBatcher:
    """One queue per app (per worker process), drained on the event loop."""

    def __init__(self, metrics: ApiMetrics, max_reasons: int, max_events: int = MAX_COALESCED_EVENTS) -> None:
        self.metrics = metrics
        self.max_reasons = max_reasons
        self.max_events = max_events
        self._pending: list[_Pending] = []
        self._running = False
        self._drain_pending = False
        self._lone_drains = LONE_DRAINS_BEFORE_INLINE  # lone mode until requests overlap

    @property
    def coalescing(self) -> bool:
        """Busy mode: every request coalesces, even one alone in its loop pass."""
        return self._lone_drains < LONE_DRAINS_BEFORE_INLINE

    async def start(self) -> None:
        self._running = True

    async def stop(self) -> None:
        self._running = False
        pending, self._pending = self._pending, []
        for item in pending:
            if not item.future.done():
                item.future.set_exception(RuntimeError("server shutting down"))

    async def score(self, state: ModelState, event: ScoringEvent) -> tuple[ScoringResult, int]:
        """The result this event was scored in, and its row in it."""
        if not self._running:
            raise RuntimeError("scoring batcher is not running (app lifespan not started)")
        loop = asyncio.get_running_loop()
        if not self._drain_pending and not self.coalescing and not _others_ready(loop):
            return self._score_alone(state, event), 0
        future: asyncio.Future[tuple[ScoringResult, int]] = loop.create_future()
        self._pending.append(_Pending(state, event, future))
        if self._drain_pending:
            return await future
        self._drain_pending = True
        try:
            await asyncio.sleep(0)  # the requests ready in this loop iteration queue theirs meanwhile
        except BaseException:  # cancelled: the others' drain must still happen
            future.cancel()
            loop.call_soon(self._drain)
            raise
        self._drain()
        return future.result()

    def _score_alone(self, state: ModelState, event: ScoringEvent) -> ScoringResult:
        """One event scored at once; an error propagates to its own request (a 500)."""
        result = score_events(state, [event], self.max_reasons)
        self.metrics.record_scores(result.known_user, int(np.count_nonzero(result.flags)))
        return result

    def _drain(self) -> None:
        """Score everything queued, at most ``max_events`` per pass, grouped by state."""
        self._drain_pending = False
        queued = len(self._pending)
        self._lone_drains = 0 if queued > 1 else min(self._lone_drains + 1, LONE_DRAINS_BEFORE_INLINE)
        while self._pending:
            batch, self._pending = self._pending[:self.max_events], self._pending[self.max_events:]
            groups: dict[int, list[_Pending]] = {}
            for item in batch:
                if not item.future.done():  # a client that went away is skipped
                    groups.setdefault(id(item.state), []).append(item)
            for items in groups.values():
                self._score_group(items)

    def _score_group(self, items: list[_Pending]) -> None:
        try:
            result = score_events(items[0].state, [p.event for p in items], self.max_reasons)
        except Exception as exc:  # answered as a 500 by the request that waits on it
            for item in items:
                if not item.future.done():
                    item.future.set_exception(exc)
            return
        self.metrics.record_scores(result.known_user, int(np.count_nonzero(result.flags)))
        for row, item in enumerate(items):
            if not item.future.done():
                item.future.set_result((result, row))


def _others_ready(loop: asyncio.AbstractEventLoop) -> bool:
    """Whether any callback besides the running one is ready to run in this loop pass: only
    then can a yield let another request queue its event. Unknown (no ``_ready``): yes."""
    ready = getattr(loop, "_ready", None)
    return ready is None or len(ready) > 0
