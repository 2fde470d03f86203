"""Coalescing of concurrent single-event /predict requests, on the event loop, only when
they overlap.

Scoring an event is array arithmetic over the compiled snapshot (~0.05 ms), so it runs on
the event loop itself: a thread hop would cost more than the work. Requests that overlap
are scored together, because scoring a few dozen events costs little more than scoring
one: over HTTP at 16 connections coalescing gave 1.3-1.7x the requests/s of scoring each
alone, while the one yield it takes cost a lone caller 12-21% in process
(``benchmarks/results/api_latency.md``). So the batcher has two modes:

- **lone** (at start, and once no pass has coalesced several events for
  ``busy_hold_sec``): the event is scored at once, inline, without yielding. Every
  ``sample_every``-th such request marks its loop pass (a ``call_soon`` that clears the
  mark in the next pass); a second request scored in a marked pass has overlapped with
  it, and switches the batcher to busy mode (and coalesces itself). Not every pass is
  marked because the mark costs what a yield costs, one more loop pass (over HTTP at one
  connection a mark per request gave 0.89x and a yield per request 0.93x the requests/s
  of plain inline scoring); under load a sampled pass finds its overlap within a few
  milliseconds. This needs nothing from the loop but ``call_soon``, so it works the same
  on asyncio's loop and on uvloop (which uvicorn runs when it is installed);
- **busy** (for ``busy_hold_sec`` after an overlap or a pass that coalesced several
  events): every request coalesces, even one alone in its loop pass: under load a yield
  also lets more requests accumulate for the next pass.

Coalescing: the event is queued and, if no drain is pending, its request becomes the one
that drains: it yields to the loop once (``asyncio.sleep(0)``), which runs the ready
callbacks (other requests parsed in the same loop pass, which queue their events and wait
on a future), then scores everything queued in one vectorised pass and takes its own
answer directly. If that request is cancelled while it yields, a drain is scheduled for
the others.

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
# How long after the last pass that coalesced several events every request still coalesces:
# long against the gaps between overlaps under load (milliseconds), short against a lone
# caller's cost (its first ~0.1 s of requests after a burst pay one yield each).
BUSY_HOLD_SEC = 0.1
# In lone mode, one inline request in this many marks its loop pass to detect overlap.
SAMPLE_EVERY = 16


@dataclass(frozen=True, slots=True)
class _Pending:
    state: ModelState
    event: ScoringEvent
    future: asyncio.Future[tuple[ScoringResult, int]]


class ScoringBatcher:
    """One queue per app (per worker process), drained on the event loop."""

    def __init__(self, metrics: ApiMetrics, max_reasons: int, max_events: int = MAX_COALESCED_EVENTS,
                 busy_hold_sec: float = BUSY_HOLD_SEC, sample_every: int = SAMPLE_EVERY) -> None:
        self.metrics = metrics
        self.busy_hold_sec = busy_hold_sec
        self.sample_every = sample_every
        self.max_reasons = max_reasons
        self.max_events = max_events
        self._pending: list[_Pending] = []
        self._running = False
        self._drain_pending = False
        self._busy_until = float("-inf")  # lone mode until requests overlap
        self._inline_this_pass = False
        self._inline_count = 0

    def coalescing(self, now: float) -> bool:
        """Busy mode at loop time ``now``: every request coalesces, even one alone in its loop pass."""
        return now < self._busy_until

    def _overlapping(self, loop: asyncio.AbstractEventLoop) -> bool:
        """Whether this request must coalesce: busy mode, or another request was already scored
        inline in this marked loop pass (then busy mode starts). Otherwise it is scored
        inline, and every ``sample_every``-th one marks its pass."""
        if self._inline_this_pass:
            self._busy_until = loop.time() + self.busy_hold_sec
            return True
        if loop.time() < self._busy_until:
            return True
        self._inline_count += 1
        if self._inline_count >= self.sample_every:
            self._inline_count = 0
            self._inline_this_pass = True
            loop.call_soon(self._pass_ended)
        return False

    def _pass_ended(self) -> None:
        self._inline_this_pass = False

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
        if not self._drain_pending and not self._overlapping(loop):
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
        if len(self._pending) > 1:
            self._busy_until = asyncio.get_running_loop().time() + self.busy_hold_sec
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

