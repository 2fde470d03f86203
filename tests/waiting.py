"""The one way tests wait for something: poll a condition until it holds or time runs out.

A fixed sleep either wastes time on a quiet machine or is too short on a loaded one;
polling the condition the sleep stood for is neither, and on timeout the failure names
what never happened.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import signal
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from pathlib import Path
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


def blocked_on_flock(lock: Path, pid: int) -> bool:
    """Whether process ``pid`` waits for the flock of ``lock`` (a ``->`` line of /proc/locks):
    how a kill test knows a process reached that exact point (the test holding the lock)."""
    inode = lock.stat().st_ino  # a waiter's line: "1: -> FLOCK ADVISORY WRITE <pid> <dev>:<inode> 0 EOF"
    rows = [line.split() for line in Path("/proc/locks").read_text().splitlines()]
    return any("->" in row and row[-4] == str(pid) and row[-3].endswith(f":{inode}") for row in rows)


def stopped(pid: int) -> bool:
    """Whether process ``pid`` is stopped (state ``T`` in /proc/<pid>/stat)."""
    return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] == "T"


def kill_when_blocked_on_flock(lock: Path, argv: Sequence[str], env: Mapping[str, str] | None = None,
                               timeout: float = 120) -> None:
    """Run ``argv`` while this process holds the flock of ``lock`` and SIGKILL it once it
    waits for that lock: a crash of a command at exactly that point of its work."""
    fd = os.open(lock, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        process = subprocess.Popen(list(argv), env=None if env is None else dict(env),
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_until(lambda: blocked_on_flock(lock, process.pid), timeout, f"{argv[1:3]} to wait for {lock.name}")
        finally:
            process.send_signal(signal.SIGKILL)
            process.wait()
    finally:
        os.close(fd)


DOCUMENTED_PORT_LOCK = Path("/tmp/uba-tests-port-8000.lock")


@contextlib.contextmanager
def documented_port() -> Iterator[None]:
    """Hold port 8000 for a test that runs the documented ``uba-api`` (the README's walk,
    the demo's printed commands): both tests checked the port was free and then both
    bound it when the parallel workers ran them at once, and one failed with EADDRINUSE.
    An flock shared by every test process makes the second wait for the first."""
    fd = os.open(DOCUMENTED_PORT_LOCK, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
