"""How the server spends its time outside scoring: the buffered access log and a heap
settled out of the cyclic collector's reach (benchmarks/api_latency.py measures both)."""

from __future__ import annotations

import asyncio
import gc
import io as textio
import json
import weakref
from pathlib import Path

import pytest
from api_world import SEED_PAYLOAD, running_server, train_bundle
from waiting import wait_until, wait_until_async
from worlds import World, training_days

from uba import io
from uba.api import reloader
from uba.api.access_log import PIPE_BUF, AccessLog
from uba.api.app import create_app
from uba.api.reloader import reload_runtime


@pytest.fixture(scope="module")
def world(serving_world: World) -> World:
    return serving_world


class _Writes(textio.StringIO):
    """A log stream that remembers the size of every write it was given."""

    def __init__(self) -> None:
        super().__init__()
        self.sizes: list[int] = []

    def write(self, text: str) -> int:
        self.sizes.append(len(text.encode()))
        return super().write(text)


def _access_lines(log: Path) -> list[str]:
    return [line for line in log.read_text().splitlines() if "uba.api.access" in line]


def test_access_lines_reach_the_log_within_the_flush_interval_while_the_server_runs(
        world: World, tmp_path: Path) -> None:
    log = tmp_path / "api.log"
    env = world.env(UBA_API__ACCESS_LOG_FLUSH_SEC="0.2")
    flags = ["--data-dir", str(world.data_dir), "--model-dir", str(world.model_dir)]
    with running_server(env, log, uba_api=flags) as server, server.client() as c:
        for i in range(5):
            assert c.post("/predict", json=SEED_PAYLOAD, headers={"X-Request-ID": f"live-{i}"}).status_code == 200
        wait_until(lambda: len([x for x in _access_lines(log) if "live-" in x]) >= 5, 10,
                   "the five access lines in the log")
        live = [x for x in _access_lines(log) if "live-" in x]
        assert len(live) == 5, log.read_text()[-2000:]  # written while serving, not only at exit
        assert server.process.poll() is None
        c.get("/ready", headers={"X-Request-ID": "last-one"})
    # the lines of the last interval are flushed by the graceful shutdown
    assert any("request_id=last-one" in x for x in _access_lines(log))


def test_buffered_lines_go_out_whole_in_writes_no_larger_than_pipe_buf() -> None:
    stream = _Writes()
    access = AccessLog(buffer_bytes=1 << 20, flush_sec=60)
    access._stream, access._json = stream, True  # what start() takes from the logging set-up
    paths = [f"/predict/{'é' * (i % 7)}{i}" for i in range(300)]
    for i, path in enumerate(paths):
        access.write("127.0.0.1:1", "POST", path, 200, 0.0004, f"id-{i}")
    assert stream.sizes == []  # below the buffer size nothing is written
    access.flush()
    assert len(stream.sizes) > 1 and max(stream.sizes) <= PIPE_BUF
    lines = stream.getvalue().splitlines()
    entries = [json.loads(line) for line in lines]  # every line whole: none split across writes
    assert [e["path"] for e in entries] == paths
    assert [e["request_id"] for e in entries] == [f"id-{i}" for i in range(300)]
    assert entries[0]["logger"] == "uba.api.access" and entries[0]["status"] == 200


def test_a_full_buffer_is_written_at_once() -> None:
    stream = _Writes()
    access = AccessLog(buffer_bytes=1000, flush_sec=60)
    access._stream = stream
    for i in range(30):
        access.write("127.0.0.1:1", "GET", "/ready", 200, 0.001, f"id-{i}")
    written = stream.getvalue().splitlines()
    assert 0 < len(written) < 30 and sum(stream.sizes) >= 1000  # flushed when the buffer filled
    access.flush()
    assert len(stream.getvalue().splitlines()) == 30


def test_loaded_state_is_frozen_and_a_reload_lets_the_previous_state_go(world: World, tmp_path: Path) -> None:
    """After start-up the long-lived objects are out of the collector's reach; after a
    reload the previous model state is collected (not frozen for good) and the new one frozen."""
    own = world.copy(tmp_path / "w")
    app = create_app(own.settings())
    runtime = app.state.runtime

    async def run() -> tuple[int, int, bool, str]:
        async with app.router.lifespan_context(app):
            frozen_at_start = gc.get_freeze_count()
            previous = weakref.ref(runtime.holder.current.bundle)
            baselines = io.read_baseline_snapshot(io.latest_baseline_snapshot(own.data_dir)[1])
            version, _ = train_bundle(own.settings(random_state=7), training_days(), baselines)
            await reload_runtime(runtime)

            async def settled() -> bool:  # the scheduled settle ran (none pending) and freed the old bundle
                return not reloader._settling and previous() is None

            await wait_until_async(settled, 10, "the settle after the reload to run and free the previous bundle")
            return frozen_at_start, gc.get_freeze_count(), previous() is None, version

    try:
        at_start, after_reload, released, version = asyncio.run(run())
    finally:
        gc.unfreeze()  # the rest of the test session collects as usual
    assert at_start > 50_000, at_start
    assert after_reload > 50_000, after_reload
    assert released, "the previous bundle is still alive after the reload settled"
    assert runtime.holder.current.version == version


@pytest.mark.parametrize("json_format", [False, True])
def test_a_long_path_is_cut_so_every_write_stays_within_pipe_buf(json_format: bool) -> None:
    """Any client can send a 20,000-character path; written whole, its line was one write
    over PIPE_BUF, and two workers' lines interleaved inside it (found by review)."""
    stream = _Writes()
    access = AccessLog(buffer_bytes=1 << 20, flush_sec=60)
    access._stream, access._json = stream, json_format
    for i, path in enumerate(["/ready", "/" + "x" * 20000, "/ready"]):
        access.write("127.0.0.1:1", "GET", path, 200, 0.001, f"id-{i}")
    access.flush()
    assert max(stream.sizes) <= PIPE_BUF, stream.sizes
    lines = stream.getvalue().splitlines()
    assert len(lines) == 3 and "...[20001 chars]" in lines[1]


def test_requests_that_arrive_together_are_scored_together_and_a_cancelled_one_strands_nobody(
        world: World) -> None:
    """In busy mode, events queued in the same loop iteration are scored in one pass (the answers equal
    those of each event scored alone, which takes the one-event path); when the request
    that drains is cancelled while it yields, the others are still answered."""
    from uba.api.routes.predict import to_scoring_event

    app = create_app(world.settings())
    runtime = app.state.runtime

    async def run() -> tuple[list, list, list]:
        async with app.router.lifespan_context(app):
            state = runtime.holder.current
            users = [*list(state.baselines.compiled.positions)[:5], "never-seen"]
            events = [to_scoring_event(runtime.models.event.model_validate(
                {**SEED_PAYLOAD, "user_id": user, "hour_of_day": (2 + 5 * i) % 24,
                 "events_in_session": 10 + 40 * i})) for i, user in enumerate(users)]
            alone = [await runtime.batcher.score(state, event) for event in events]
            runtime.batcher.busy_hold_sec, runtime.batcher.sample_every = 3600.0, 1
            await asyncio.gather(*(runtime.batcher.score(state, event) for event in events[:2]))  # busy mode
            together = await asyncio.gather(*(runtime.batcher.score(state, event) for event in events))
            tasks = [asyncio.create_task(runtime.batcher.score(state, event)) for event in events[:3]]
            await asyncio.sleep(0)  # all three queued, the first one yielding before it drains
            tasks[0].cancel()
            after_cancel = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 10)
            return alone, together, after_cancel

    alone, together, after_cancel = asyncio.run(run())
    assert all(result is together[0][0] for result, _ in together)  # one scoring pass
    assert [row for _, row in together] == list(range(len(alone)))
    for i, (one, _) in enumerate(alone):
        both = together[i][0]
        assert len(one.scores) == 1
        assert one.scores[0] == both.scores[i] and one.flags[0] == both.flags[i]
        assert one.reasons[0] == both.reasons[i] and one.reason_kinds[0] == both.reason_kinds[i]
        assert one.known_user[0] == both.known_user[i]
    assert isinstance(after_cancel[0], asyncio.CancelledError)
    for i in (1, 2):
        result, row = after_cancel[i]
        assert result.scores[row] == alone[i][0].scores[0]


def test_a_lone_request_is_scored_at_once_and_overlapping_ones_still_together(world: World) -> None:
    """A lone request is scored without yielding: its coroutine finishes in its first step.
    A second request in the same (sampled) loop pass has overlapped with it: it yields to coalesce,
    and so does every request for a while after (busy mode), even one alone in its pass;
    then a lone request is scored at once again."""
    from uba.api.routes.predict import to_scoring_event

    app = create_app(world.settings())
    runtime = app.state.runtime

    def first_step(coro):  # type: ignore[no-untyped-def]
        """The coroutine run by hand up to its first suspension: (finished, its value)."""
        try:
            coro.send(None)
        except StopIteration as done:
            return True, done.value
        coro.close()
        return False, None

    async def run() -> tuple:
        async with app.router.lifespan_context(app):
            batcher, state = runtime.batcher, runtime.holder.current
            events = [to_scoring_event(runtime.models.event.model_validate(
                {**SEED_PAYLOAD, "user_id": user})) for user in list(state.baselines.compiled.positions)[:2]]
            batcher.busy_hold_sec = 3600.0  # an overlap holds busy mode for the rest of the test ...
            batcher.sample_every = 1  # every inline request marks its loop pass
            await asyncio.sleep(0)  # a fresh loop pass
            lone = first_step(batcher.score(state, events[0]))
            same_pass = first_step(batcher.score(state, events[1]))
            await asyncio.sleep(0)
            busy_alone = first_step(batcher.score(state, events[0]))
            overlapping = await asyncio.gather(*(batcher.score(state, e) for e in events))
            batcher.busy_hold_sec = 0.0  # ... until a pass that coalesces holds it for no time
            await asyncio.gather(*(batcher.score(state, e) for e in events))
            await asyncio.sleep(0)
            lone_again = first_step(batcher.score(state, events[0]))
            return lone, same_pass, busy_alone, overlapping, lone_again

    (finished, (result, row)), same_pass, busy_alone, overlapping, lone_again = asyncio.run(run())
    assert finished and row == 0 and len(result.scores) == 1
    assert not same_pass[0] and not busy_alone[0]
    assert overlapping[0][0] is overlapping[1][0] and [r for _, r in overlapping] == [0, 1]
    assert overlapping[0][0].scores[0] == result.scores[0]
    assert lone_again[0]
