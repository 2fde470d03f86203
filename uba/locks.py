"""One scoring run per date at a time.

Two runs of the same date would race on the staging directory and the final swap, so
the second one is refused instead of interleaved. The lock is ``fcntl.flock`` on
``<output-dir>/runs/event_date=D/.lock``: the kernel drops it when the holder exits for
any reason (SIGKILL and OOM included), so a crashed run never leaves a stale lock and
there is no PID-guessing. The file itself stays (deleting a locked file lets a third
process lock a fresh inode while the second still holds the old one); its contents
only tell the refused user who holds it.

``flock`` is per host: on a network filesystem shared by several machines it does not
exclude runs on other hosts (run one scheduler per output directory).
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date
from pathlib import Path

from uba import io
from uba.errors import UserError

LOCK_NAME = ".lock"


class RunLockedError(UserError):
    """Another process is scoring the same date right now."""


def lock_path(output_dir: Path, day: date) -> Path:
    """Where the per-date lock lives: beside the run manifests of that date."""
    return io.partition_dir(Path(output_dir), io.RUNS, day) / LOCK_NAME


def _holder_description(handle_fd: int) -> str:
    try:
        raw = os.pread(handle_fd, 4096, 0).decode("utf-8", "replace")
        info = json.loads(raw)
        return f"pid {info['pid']} on {info['host']}, since {info['started_at']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "holder unknown"


@contextmanager
def date_lock(output_dir: Path, day: date) -> Iterator[Path]:
    """Hold the scoring lock of ``day`` for the duration of the block, or raise RunLockedError."""
    path = lock_path(output_dir, day)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as exc:  # a mistyped --output-dir (under a file, no permission): one line
        raise UserError(f"cannot create the run lock {path}: {exc.strerror or exc} (check --output-dir)") from exc
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder_description(fd)
            raise RunLockedError(
                f"another score run for {day.isoformat()} is in progress ({holder}; lock {path}); "
                "wait for it to finish"
            ) from None
        info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        yield path
    finally:
        os.close(fd)


def try_exclusive_lock(path: Path) -> int | None:
    """An exclusive, non-blocking lock on ``path`` (created if missing), as an open file
    descriptor to ``os.close`` when done; None when another process holds it. The kernel
    drops it when the holder dies, SIGKILL included."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd
