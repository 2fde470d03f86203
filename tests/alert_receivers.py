"""Real receivers on 127.0.0.1 for the alert delivery tests: a webhook that misbehaves on
purpose (5xx, timeouts, down for a run, refusing some alerts, blocking), checking the
``X-UBA-Signature`` of every request it records; scripted raw answers; a webhook that
answers before reading the request."""

from __future__ import annotations

import json
import random
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from uba.alerting.signing import HEADER, verify_signature


@contextmanager
def refusing_port() -> Iterator[int]:
    """A loopback port that refuses connections for as long as the block runs: bound (so
    nothing else can take it) but never listening, so a connect gets ECONNREFUSED."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield int(s.getsockname()[1])


def record_day(record: dict[str, Any]) -> str:
    """The event date of a delivered record, whatever its format."""
    if "event_date" in record:
        return str(record["event_date"])
    if "unmapped" in record:
        return str(record["unmapped"]["uba"]["event_date"])
    return str(record["labels"]["uba_event_date"])


@dataclass
class Behaviour:
    """How the receiver answers: shares of 5xx and of timeouts (deterministic from seed)."""

    fail_rate: float = 0.0
    timeout_rate: float = 0.0
    sleep_sec: float = 0.0          # how long a "timeout" request sleeps before answering
    seed: int = 7
    reject_ids: frozenset[str] = frozenset()   # a batch holding one of these gets 400
    status_for_all: int | None = None          # e.g. 401: every request refused
    fail_requests: frozenset[int] = frozenset()  # these requests (1-based) get 503
    retry_after: str | None = None             # sent with 503 answers
    block_on_request: int | None = None        # the n-th request (1-based) records, then blocks
    release: threading.Event = field(default_factory=threading.Event)
    blocked: threading.Event = field(default_factory=threading.Event)


class WebhookReceiver:
    """An http.server webhook in a thread; ``arrivals`` lists (alert id, day) of every
    accepted record in arrival order (duplicates included)."""

    def __init__(self, secrets: list[bytes] | None = None, behaviour: Behaviour | None = None,
                 tls: ssl.SSLContext | None = None, keep_alive: bool = False) -> None:
        self.secrets = secrets or []
        self.tls = tls
        self.keep_alive = keep_alive  # HTTP/1.1 answering "Connection: keep-alive" whatever the request said
        self.behaviour = behaviour or Behaviour()
        self.arrivals: list[tuple[str, str]] = []
        self.requests = 0
        self.bad_signatures = 0
        self.delivery_ids: list[str] = []
        self.bodies: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._rng = random.Random(self.behaviour.seed)
        self.port = 0
        self._server: ThreadingHTTPServer | None = None
        self.up()

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}/hook"

    def up(self) -> None:
        """Listen (again on the same port after ``down``)."""
        server = ThreadingHTTPServer(("127.0.0.1", self.port), self._handler())
        server.daemon_threads = True
        server.block_on_close = False
        if self.tls is not None:
            server.socket = self.tls.wrap_socket(server.socket, server_side=True)
        self.port = server.server_address[1]
        self._server = server
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def down(self) -> None:
        """Stop listening: connections are refused until ``up``."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def ids(self) -> list[str]:
        return [a for a, _ in self.arrivals]

    def _decide(self) -> tuple[int, str]:
        with self._lock:
            self.requests += 1
            n = self.requests
            roll = self._rng.random()
        b = self.behaviour
        if b.block_on_request == n:
            return n, "block"
        if roll < b.fail_rate or n in b.fail_requests:
            return n, "fail"
        if roll < b.fail_rate + b.timeout_rate:
            return n, "sleep"
        return n, "ok"

    def _accept(self, body: bytes, headers: Any) -> tuple[int, dict[str, Any]]:
        if self.secrets and not verify_signature(headers.get(HEADER), body, self.secrets):
            with self._lock:
                self.bad_signatures += 1
            return 401, {}
        doc = json.loads(body)
        if set(doc.get("alert_ids", ())) & self.behaviour.reject_ids:
            return 400, doc
        with self._lock:
            self.bodies.append(doc)
            self.delivery_ids.append(headers.get("X-UBA-Delivery-Id", ""))
            self.arrivals += [(a, record_day(r)) for a, r in zip(doc["alert_ids"], doc["records"], strict=True)]
        return 200, doc

    def _handler(self) -> Callable[..., BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            # a handler that sets "Connection: keep-alive" itself keeps the connection open
            # after a request that asked to close it (http.server lets the header decide)
            protocol_version = "HTTP/1.1" if receiver.keep_alive else "HTTP/1.0"

            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def _answer(self, status: int, extra: dict[str, str] | None = None) -> None:
                try:
                    self.send_response(status)
                    if receiver.keep_alive:
                        self.send_header("Connection", "keep-alive")
                    for key, value in (extra or {}).items():
                        self.send_header(key, value)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                except OSError:
                    pass

            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                b = receiver.behaviour
                if b.status_for_all is not None:
                    return self._answer(b.status_for_all, {"Retry-After": b.retry_after} if b.retry_after else None)
                n, action = receiver._decide()
                if action == "fail":
                    return self._answer(503, {"Retry-After": b.retry_after} if b.retry_after else None)
                status, _ = receiver._accept(body, self.headers)
                if action == "block":
                    b.blocked.set()
                    b.release.wait(30)
                elif action == "sleep":
                    time.sleep(b.sleep_sec)  # recorded, but the sender has given up: it retries
                return self._answer(status)

        return Handler


class UvicornWebhook:
    """A webhook served by uvicorn (h11, asyncio), as an ASGI app is deployed, over TLS with
    ``certificate`` (cert, key): it reads each batch, records its alert ids in ``arrivals``
    and answers ``200 {"ok": true}``. Over TLS asyncio closes a connection with a TLS
    close_notify and then waits (up to 30 s) for the client's before closing TCP."""

    def __init__(self, certificate: tuple[str, str] | None = None) -> None:
        import uvicorn

        self.arrivals: list[str] = []
        self.tls = certificate is not None
        config = uvicorn.Config(self._app, host="127.0.0.1", port=0, http="h11", loop="asyncio", interface="asgi3",
                                lifespan="off", access_log=False, log_level="warning",
                                ssl_certfile=certificate[0] if certificate else None,
                                ssl_keyfile=certificate[1] if certificate else None)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        self.port = int(self._server.servers[0].sockets[0].getsockname()[1])

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}/hook"

    async def _app(self, scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        body, more = b"", True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        self.arrivals += json.loads(body)["alert_ids"]
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": b'{"ok": true}'})

    def close(self) -> None:
        self._server.should_exit = True
        self._thread.join(10)


def self_signed_certificate(folder: Path) -> tuple[Path, Path]:
    """A certificate and key for 127.0.0.1 made by openssl (as a private CA would), for TLS
    receivers and collectors; the certificate is the sink's ``ca_file``. Skips the test
    when openssl is missing (.ci/run installs it)."""
    import pytest

    if shutil.which("openssl") is None:
        pytest.skip("openssl not installed (.ci/run installs it)")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "2", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True)
    return cert, key


class _LoopbackServer:
    """A TCP server on 127.0.0.1 (a free port) whose thread hands each accepted connection
    to ``_handle``, until ``close``."""

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)
        self.port = self._listener.getsockname()[1]
        self._stop = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except (TimeoutError, OSError):
                continue
            self._handle(conn)

    @property
    def url(self) -> str:
        """Where a webhook sink posts (the syslog collectors take the port)."""
        return f"http://127.0.0.1:{self.port}/hook"

    def _handle(self, conn: socket.socket) -> None:
        raise NotImplementedError

    def close(self) -> None:
        self._stop.set()
        self._listener.close()


class TlsSyslogCollector(_LoopbackServer):
    """A minimal RFC 5425 collector: TLS on 127.0.0.1, reads each connection to its end,
    then closes it (as rsyslog does); ``messages`` are the octet-counted frames received."""

    def __init__(self, tls: ssl.SSLContext) -> None:
        self.messages: list[str] = []
        self._tls = tls
        super().__init__()

    def _handle(self, conn: socket.socket) -> None:
        conn.settimeout(5)
        with self._tls.wrap_socket(conn, server_side=True) as tls:
            data = b""
            try:
                while chunk := tls.recv(65536):
                    data += chunk
            except (ssl.SSLError, OSError):
                pass
            # recorded before the close, which the sender waits for: parsed after it, a test
            # that asserted as soon as delivery returned could miss the last frames
            while data:
                length, _, rest = data.partition(b" ")
                self.messages.append(rest[:int(length)].decode("utf-8"))
                data = rest[int(length):]


def _read_request(conn: socket.socket) -> bytes:
    """One HTTP request: the head, then Content-Length bytes of body."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                   if line.lower().startswith(b"content-length:")), 0)
    while len(body) < length and (chunk := conn.recv(65536)):
        body += chunk
    return head + b"\r\n\r\n" + body


class RawWebhook(_LoopbackServer):
    """A webhook that answers every request with ``answer`` bytes written ``byte_pause``
    seconds apart (0: all at once; ``at_once`` bytes first in one write), then closes
    (after ``hold_sec``: a receiver keeping the connection open): scripted misbehaviour a real http.server cannot produce (a response
    trickled a byte at a time, a status line of garbage)."""

    def __init__(self, answer: bytes, byte_pause: float = 0.0, hold_sec: float = 0.0, at_once: int = 0) -> None:
        self.answer = answer
        self.byte_pause = byte_pause
        self.hold_sec = hold_sec
        self.at_once = at_once  # with byte_pause: the first bytes (a head) sent at once, the rest trickled
        self.requests = 0
        super().__init__()

    def _handle(self, conn: socket.socket) -> None:
        self.requests += 1
        threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        with conn:
            try:
                conn.settimeout(5)
                _read_request(conn)  # all of it: closing on unread bytes would reset, not answer
                if not self.byte_pause:
                    conn.sendall(self.answer)
                    self._stop.wait(self.hold_sec)
                    return
                conn.sendall(self.answer[:self.at_once])
                for byte in self.answer[self.at_once:]:
                    if self._stop.is_set():
                        return
                    conn.sendall(bytes([byte]))
                    time.sleep(self.byte_pause)
            except OSError:
                pass


class EarlyAnswerWebhook(_LoopbackServer):
    """A webhook that answers ``200 OK`` as soon as the request line arrives and closes the
    connection without reading the rest (a handler or proxy that answers first): it never
    has the batch, whatever its status line says."""

    ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"

    def __init__(self) -> None:
        self.requests = 0
        super().__init__()

    def _handle(self, conn: socket.socket) -> None:
        self.requests += 1
        with conn:
            try:
                conn.settimeout(5)
                conn.recv(16)
                conn.sendall(self.ANSWER)
            except OSError:
                pass


class ClosingCollector:
    """A syslog collector that accepts each connection and closes it at once, reading
    nothing (at its connection limit, or going down): it never has a batch. A process of
    its own, so that its close races our send as a real collector's does."""

    CODE = ("import socket, sys\n"
            "s = socket.create_server(('127.0.0.1', 0))\n"
            "print(s.getsockname()[1], flush=True)\n"
            "while True:\n"
            "    s.accept()[0].close()\n")

    def __init__(self) -> None:
        import subprocess
        import sys

        self._process = subprocess.Popen([sys.executable, "-c", self.CODE], stdout=subprocess.PIPE, text=True)
        assert self._process.stdout is not None
        self.port = int(self._process.stdout.readline())

    def close(self) -> None:
        self._process.kill()
        self._process.wait(10)


Step = tuple[str, int | None]


def _recv_exact(conn: socket.socket, size: int) -> bytes:
    """Exactly ``size`` bytes (fewer only at the end of the stream): what a collector reads
    must stop at a frame's end, so the rest stays unread in its kernel."""
    data = b""
    while len(data) < size and (chunk := conn.recv(size - len(data))):
        data += chunk
    return data


def _read_frame(conn: socket.socket) -> bytes | None:
    """One RFC 6587 octet-counted frame, read to its last byte and no further; None at the end."""
    length = b""
    while (byte := conn.recv(1)) not in (b"", b" "):
        length += byte
    return _recv_exact(conn, int(length)) if length else None


class ScriptedSyslogCollector(_LoopbackServer):
    """A TCP syslog collector (RFC 5425 TLS with ``tls``) that plays ``script`` on each
    connection, step by step:
    ``("read", n)`` reads n more frames (None: to the end of the stream), ``("half-close",
    None)`` shuts down its sending side (its FIN) and keeps the socket, ``("close", None)``
    closes it, ``("hold", None)`` keeps it open reading nothing more until ``close``.
    ``reads`` holds, per connection, the alert ids of the frames it read. Its receive
    buffer is fixed (``rcvbuf``) so that a batch larger than the buffers between us cannot
    be all written before it reads."""

    def __init__(self, script: Sequence[Step], rcvbuf: int = 65536, tls: ssl.SSLContext | None = None) -> None:
        self.script = list(script)
        self.reads: list[list[str]] = []
        self._tls = tls
        super().__init__()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)

    def _handle(self, conn: socket.socket) -> None:
        ids: list[str] = []
        self.reads.append(ids)
        threading.Thread(target=self._play, args=(conn, ids), daemon=True).start()

    def _play(self, conn: socket.socket, ids: list[str]) -> None:
        conn.settimeout(30)
        try:
            if self._tls is not None:
                conn = self._tls.wrap_socket(conn, server_side=True)
            for action, count in self.script:
                if action == "read":
                    self._read(conn, count, ids)
                elif action == "half-close":  # TCP's FIN (for TLS without close_notify, as UBA does)
                    socket.socket.shutdown(conn, socket.SHUT_WR)
                elif action == "hold":
                    self._stop.wait(60)
                    break
                elif action == "close":
                    break
        except OSError:
            pass
        finally:
            conn.close()

    @staticmethod
    def _read(conn: socket.socket, count: int | None, ids: list[str]) -> None:
        done = 0
        while count is None or done < count:
            frame = _read_frame(conn)
            if frame is None:
                return
            ids.append(frame.split(b'alert_id="', 1)[1].split(b'"', 1)[0].decode())
            done += 1
