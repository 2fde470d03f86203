"""The per-request access line, written in blocks rather than one ``logging`` call a line.

Through ``logging`` an access line cost ~70 us of the event loop's time (a LogRecord,
the caller lookup, the formatter's clock, a write and a flush per line): more than
20% of the server's throughput at 16 connections, for a line nobody reads in the hot
path. Here a line is one f-string into a buffer; the buffer goes out in whole lines, in
writes of at most ``PIPE_BUF`` bytes (so lines of several workers sharing one pipe,
such as a container's stdout, never interleave inside a line), when it passes
``api.access_log_buffer_bytes``, every ``api.access_log_flush_sec`` and at shutdown:
nginx's ``access_log ... buffer= flush=``. The cost of that choice: a process killed
with SIGKILL loses at most the last interval's lines.

The line is the same as the ``uba`` logger writes (text or JSON, ``uba.logs``), on the
stream of that logger's handler, so an access line still looks like any other log line.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import time
from typing import IO, cast

import orjson

from uba.logs import LOGGER_NAME, current_format

ACCESS_LOGGER = f"{LOGGER_NAME}.api.access"
PIPE_BUF = 4096  # POSIX: writes of at most this many bytes to a pipe are never interleaved
# A client chooses the path: longer ones are cut (with a marker) so that one line, even in
# JSON where the path appears twice, still fits in one PIPE_BUF write.
MAX_LOGGED_PATH = 1024


def _log_stream() -> IO[str]:
    """The stream of the ``uba`` logger's handler (stderr as ``uba.logs`` sets it up)."""
    logger = logging.getLogger(LOGGER_NAME)
    for handler in logger.handlers:
        stream = getattr(handler, "stream", None)
        if stream is not None:
            return cast("IO[str]", stream)  # logging.Handler has no typed stream attribute
    return sys.stderr


class _Clock:
    """``logging.Formatter``'s local ``asctime`` (``2026-12-05 05:06:02,653``), its
    seconds part built once a second instead of by strftime on every line."""

    def __init__(self) -> None:
        self._second = -1
        self._local = ""
        self._utc = ""

    def _refresh(self, second: int) -> None:
        self._second = second
        self._local = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second))
        self._utc = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)) + "Z"

    def local(self, now: float) -> str:
        second = int(now)
        if second != self._second:
            self._refresh(second)
        return f"{self._local},{int((now - second) * 1000):03d}"

    def utc(self, now: float) -> str:
        """The JSON format's ``ts`` (whole seconds, UTC), as ``uba.logs`` writes it."""
        second = int(now)
        if second != self._second:
            self._refresh(second)
        return self._utc


class AccessLog:
    """Buffered access lines for one worker process; used only from its event loop thread."""

    def __init__(self, buffer_bytes: int = 65536, flush_sec: float = 1.0) -> None:
        self.buffer_bytes = buffer_bytes
        self.flush_sec = flush_sec
        self._lines: list[str] = []
        self._size = 0
        self._clock = _Clock()
        self._json = False
        self._enabled = True
        self._stream: IO[str] | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Takes the log format, level and stream as configured by now (the lifespan runs
        after ``uba-api`` or the worker set logging up) and starts the periodic flush."""
        self._json = current_format() == "json"
        self._enabled = logging.getLogger(ACCESS_LOGGER).isEnabledFor(logging.INFO)
        self._stream = _log_stream()
        if self.buffer_bytes > 0 and self.flush_sec > 0:
            self._task = asyncio.create_task(self._flush_periodically(), name="uba-access-log-flush")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self.flush()

    def write(self, client: str, method: str, path: str, status: int, seconds: float, request_id: str) -> None:
        """One access line (``method`` and ``path`` already escaped by the caller)."""
        if not self._enabled:
            return
        if len(path) > MAX_LOGGED_PATH:
            path = f"{path[:MAX_LOGGED_PATH]}...[{len(path)} chars]"
        now = time.time()
        ms = seconds * 1000
        message = f'{client} "{method} {path}" {status} {ms:.1f}ms request_id={request_id}'
        if self._json:
            line = orjson.dumps({
                "ts": self._clock.utc(now), "level": "info", "logger": ACCESS_LOGGER, "msg": message,
                "client": client, "method": method, "path": path, "status": status,
                "duration_ms": round(ms, 3), "request_id": request_id,
            }).decode() + "\n"
        else:
            line = f"{self._clock.local(now)} INFO {ACCESS_LOGGER}: {message}\n"
        self._lines.append(line)
        self._size += len(line) if line.isascii() else len(line.encode())
        if self._size >= self.buffer_bytes:
            self.flush()

    def flush(self) -> None:
        """Writes the buffered lines in blocks of whole lines of at most PIPE_BUF bytes."""
        if not self._lines:
            return
        lines, self._lines, self._size = self._lines, [], 0
        stream = self._stream or _log_stream()
        block: list[str] = []
        size = 0
        try:
            for line in lines:
                length = len(line) if line.isascii() else len(line.encode())
                if block and size + length > PIPE_BUF:
                    stream.write("".join(block))
                    block, size = [], 0
                block.append(line)
                size += length
            stream.write("".join(block))
            stream.flush()
        except (OSError, ValueError):  # a closed or broken log stream must not fail requests
            pass

    async def _flush_periodically(self) -> None:
        while True:
            await asyncio.sleep(self.flush_sec)
            self.flush()
