"""The one way tests wait for something: poll a condition until it holds or time runs out.

A fixed sleep either wastes time on a quiet machine or is too short on a loaded one;
polling the condition the sleep stood for is neither, and on timeout the failure names
what never happened.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")
POLL_SEC = 0.05


def wait_until(predicate: Callable[[], T], timeout: float, what: str, interval: float = POLL_SEC) -> T:
    """Return the first truthy value of ``predicate()``; fail naming ``what`` after ``timeout`` s.

    The predicate may raise AssertionError to say why it is not there yet (e.g. a dead
    server process): that is re-raised at once rather than waited out.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"waited {timeout:g}s for {what}, in vain")
        time.sleep(interval)


async def wait_until_async(predicate: Callable[[], Awaitable[T]], timeout: float, what: str,
                           interval: float = POLL_SEC) -> T:
    """``wait_until`` for an async predicate, yielding to the event loop between polls."""
    deadline = time.monotonic() + timeout
    while True:
        value = await predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"waited {timeout:g}s for {what}, in vain")
        await asyncio.sleep(interval)


def holds_throughout(predicate: Callable[[], object], duration: float, what: str,
                     interval: float = POLL_SEC) -> None:
    """Check ``predicate()`` stays truthy for ``duration`` s: for "nothing happens" claims,
    which can only be observed over a span of time; fails at the first moment it breaks."""
    deadline = time.monotonic() + duration
    while True:
        assert predicate(), f"{what} stopped holding within {duration:g}s"
        if time.monotonic() >= deadline:
            return
        time.sleep(interval)
