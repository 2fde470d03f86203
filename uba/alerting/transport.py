"""Sending one batch to one sink, and telling what the answer means for the outbox.

Every send ends in one of three ``Outcome`` kinds:

- ``ack``: the sink has the batch (a 2xx after which the receiver closed the connection,
  at the latest once we half-closed ours, without resetting it, and whose JSON answer
  reports no error; for syslog, the bytes were sent and the collector closed the
  connection after our end of the batch reached it, having read them all as far as TCP
  can tell);
- ``retry``: try again later (timeouts, refused or reset connections, 5xx, 408, 429,
  a 413 with a ``Retry-After``, a 2xx answer that reports an error or that came before
  the receiver read the request); and ``stop``, a failure no retry of this run will cure and
  that is not the alerts' fault (3xx, 401, 403, 404, 405, 407: the URL or credentials
  are wrong): the alerts stay pending;
- ``reject``: the sink refuses the content (any other 4xx): the batch is split to find
  the alert(s) it refuses, which become dead letters.

Only the standard library: ``http.client``, ``socket`` and ``ssl``.
"""

from __future__ import annotations

import email.utils
import http.client
import json
import os
import select
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Literal
from urllib.parse import unquote, urlsplit

from uba import __version__
from uba.alerting.payloads import delivery_id, octet_frame, webhook_body
from uba.alerting.signing import HEADER, sign
from uba.settings import SyslogSink, WebhookSink

Kind = Literal["ack", "retry", "stop", "reject"]
SINK_WIDE_4XX = frozenset({401, 403, 404, 405, 407})
RETRYABLE_4XX = frozenset({408, 425, 429})
MAX_ANSWER_CHARS = 200


@dataclass(frozen=True)
class Outcome:
    """What a send means for the outbox (see the module doc)."""

    kind: Kind
    detail: str
    retry_after: float | None = None


def tls_context(verify: bool, ca_file: str | None) -> ssl.SSLContext:
    """The client TLS context: system trust (or ``ca_file``), hostname checked, TLS 1.2+."""
    context = ssl.create_default_context(cafile=ca_file)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def safe_url(url: str) -> str:
    """The URL as logs may show it: scheme, host and port only (a Slack webhook's path is its secret)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}/..." if parts.path not in ("", "/") else f"{parts.scheme}://{parts.netloc}/"


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """``Retry-After`` as seconds: delta-seconds or an HTTP date (RFC 9110 10.2.3); None
    for anything else. Digits are ASCII digits: http.client reads header bytes as Latin-1,
    where ``\xb2`` is ``²``, which ``str.isdigit`` accepts and ``float`` refuses, so a
    receiver answering ``Retry-After: \xb2`` crashed the delivery run with a traceback (as
    did a date whose year does not fit a C long, even on a 2xx)."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):  # a year past a C long: OverflowError
        return None
    current = time.time() if now is None else now
    return max(0.0, when.timestamp() - current)


def one_line(text: str, limit: int = MAX_ANSWER_CHARS) -> str:
    """What a receiver said, safe for a log line, the ledger and a terminal: whitespace runs
    become one space and other unprintable characters ``?``. The receiver is not trusted:
    its answer (and the reason phrase and the errors its bytes cause) went verbatim into
    the logs, so a NUL, an ANSI escape or a line break forged log lines or rewrote the
    operator's terminal."""
    flat = " ".join(text.split())
    return "".join(c if c.isprintable() else "?" for c in flat)[:limit]


def classify_status(status: int, reason: str, retry_after: str | None) -> Outcome:
    """What an HTTP status means for the batch (see the module doc). A 413 with a
    ``Retry-After`` is the receiver saying the condition is temporary (RFC 9110 15.5.14):
    it was dead-lettered like any refusal, so a receiver shedding load by size lost
    the batch to ``alerts retry-failed``."""
    detail = one_line(f"HTTP {status} {reason}")
    wait = retry_after_seconds(retry_after)
    if 200 <= status < 300:
        return Outcome("ack", detail)
    if status >= 500 or status in RETRYABLE_4XX or (status == 413 and wait is not None):
        return Outcome("retry", detail, wait)
    if status in SINK_WIDE_4XX or 300 <= status < 400 or status < 200:
        return Outcome("stop", detail + " (the sink refuses every request: check its url and secrets)")
    return Outcome("reject", detail)


@contextmanager
def request_deadline(seconds: float, current_socket: Callable[[], socket.socket | None]) -> Iterator[threading.Event]:
    """Cut the connection once ``seconds`` have passed since the start of the request.

    A socket timeout bounds each read, not the request: a receiver (or a proxy) that
    trickles its answer a byte at a time, each byte within ``timeout_sec``, held a score
    run far past ``timeout_sec`` and ``deliver_budget_sec`` (one 10 kB header at a byte
    per 0.5 s: 80 minutes per attempt). The returned event is set when the deadline cut
    the connection, so the caller can say so instead of reporting a reset."""
    expired = threading.Event()

    def cut() -> None:
        expired.set()
        sock = current_socket()
        if sock is not None:
            with suppress(OSError):  # the plain socket's shutdown (an SSLSocket's drops its TLS state under the reader)
                socket.socket.shutdown(sock, socket.SHUT_RDWR)

    timer = threading.Timer(seconds, cut)
    timer.daemon = True
    timer.start()
    try:
        yield expired
    finally:
        timer.cancel()


def _overdue(seconds: float) -> str:
    return f"timed out (no complete answer within timeout_sec {seconds:g} s)"


ERROR_WORDS = frozenset({"error", "failed", "failure", "fail"})
ANSWER_BYTES = 65536  # of a 2xx answer read for an error report; the rest is left unread
_JSON_SPACE = " \t\n\r"


def answer_reports_error(answer: str, whole: bool = True) -> bool:
    """Whether a 2xx answer's JSON body says the batch was not taken: ``"ok": false`` (Slack's
    Web API), ``"success": false``, ``"errors": true`` (Elasticsearch's ``_bulk``), a non-empty
    ``"error"`` or ``"errors"``, or a ``"status"`` of ``error``, ``fail``, ``failed`` or ``failure``. Such a receiver (or the proxy in
    front of it) answers 200 and means no; the batch was marked delivered and never stored.
    Anything else (no body, text, JSON without these keys, JSON nested deeper than Python
    recurses, which raised RecursionError out of the delivery run) is an acknowledgement,
    as the 2xx says.

    ``whole`` False: ``answer`` is the start of a longer body. Elasticsearch's ``_bulk``
    answers one item per document after ``"took"`` and ``"errors"``, over 4 KiB for a
    few dozen alerts, and only the first 4 KiB were read, so no JSON parsed and a rejected
    batch counted delivered. The members complete within the start are read then."""
    doc = _json_object(answer) if whole else _leading_members(answer)
    if doc is None:
        return False
    status = doc.get("status")
    return (doc.get("ok") is False or doc.get("success") is False or bool(doc.get("error"))
            or bool(doc.get("errors")) or (isinstance(status, str) and status.strip().lower() in ERROR_WORDS))


def _json_object(text: str) -> dict[str, object] | None:
    try:
        doc = json.loads(text)
    except (ValueError, RecursionError):
        return None
    return doc if isinstance(doc, dict) else None


def _skip_space(text: str, at: int) -> int:
    while at < len(text) and text[at] in _JSON_SPACE:
        at += 1
    return at


def _leading_members(text: str) -> dict[str, object] | None:
    """The members of a JSON object that are complete in ``text``, its start: parsing stops
    at the first member cut off (or malformed), keeping those before it."""
    decoder = json.JSONDecoder()
    at = _skip_space(text, 0)
    if not text.startswith("{", at):
        return None
    members: dict[str, object] = {}
    at += 1
    while True:
        try:
            key, at = decoder.raw_decode(text, _skip_space(text, at))
            at = _skip_space(text, at)
            if not isinstance(key, str) or not text.startswith(":", at):
                return members
            value, at = decoder.raw_decode(text, _skip_space(text, at + 1))
        except (ValueError, RecursionError):
            return members
        members[key] = value
        at = _skip_space(text, at)
        if not text.startswith(",", at):
            return members
        at += 1


def _watcher(sock: socket.socket | None) -> socket.socket | None:
    """A second descriptor of the request's connection, so it can be watched after
    http.client has closed its own (it does once it read an answer that closes)."""
    if sock is None:
        return None
    return socket.socket(fileno=os.dup(sock.fileno()))


def _half_close(watch: socket.socket) -> None:
    """End our side of the connection (a TCP FIN; over TLS without a close_notify) once the 2xx
    is read: we send nothing more. Ordinary servers close only after the client: uvicorn (asyncio,
    uvloop) over TLS sends its close_notify and waits for the client's before closing TCP, and
    an http.server handler that sets ``Connection: keep-alive`` waits for the next request.
    Each held every batch until timeout_sec (10 s a batch by default). On our end of stream
    they close at once. A FIN is safe where a close_notify is not: a close_notify (data)
    reaching a receiver that has already closed is answered with a reset, which would read
    as a receiver that skipped the request; a FIN is not."""
    with suppress(OSError):  # already reset or cut: the wait reads why
        watch.shutdown(socket.SHUT_WR)


def _closed_without_reset(watch: socket.socket, deadline: float, cut: threading.Event) -> str | None:
    """Half-close, then wait (until ``deadline``) for the receiver to close the connection,
    as the request's ``Connection: close`` and our end of stream ask; why its 2xx is no
    acknowledgement, or None.

    A receiver that answers 200 before reading the request and closes (a misconfigured
    proxy, a handler that answers first) never had the body: its kernel resets the
    connection for the unread bytes, and a sender that read the 200 before the reset
    arrived marked the batch delivered (4 sends in 10 here). So a 2xx counts once the
    connection ended with a close, not a reset, and every byte we sent was acknowledged
    by the receiver's TCP (bytes reaching a closed socket are reset, never
    acknowledged). A receiver still holding the connection at the deadline (or when
    ``cut``, the request's deadline, closed it from our side) gave no sign of skipping the
    body: its 2xx stands."""
    _half_close(watch)
    try:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            watch.settimeout(remaining)
            if not watch.recv(65536):
                break
    except TimeoutError:
        return None
    except OSError as exc:
        return None if cut.is_set() else f"the receiver reset the connection ({_network_error(exc)})"
    if cut.is_set():
        return None
    while _unacked_segments(watch) and time.monotonic() < deadline:
        time.sleep(0.005)
    error = watch.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    if error:
        return f"the receiver reset the connection ({os.strerror(error)})"
    if _unacked_segments(watch):
        return "the receiver closed the connection before acknowledging all of the request"
    return None


class FinalResponse(http.client.HTTPResponse):
    """An answer read past every interim 1xx. RFC 9110 15.2: a client must parse any 1xx
    before the final answer; http.client skips only 100 Continue, so a receiver sending
    102 Processing or 103 Early Hints first had that taken as its answer, and the sink
    stopped as one that "refuses every request", its alerts never delivered."""

    def _read_status(self) -> tuple[str, int, str]:
        while True:
            version, status, reason = super()._read_status()  # type: ignore[misc]  # private in typeshed
            if not 101 < status < 200:  # 100 is skipped by http.client; 101 is no interim answer here
                return str(version), int(status), str(reason)
            http.client.parse_headers(self.fp)  # the 1xx's own headers, bounded like any head


class WebhookSender:
    """POSTs batches to one webhook; one connection per request (no state to go stale)."""

    def __init__(self, sink: WebhookSink, secrets: Sequence[bytes]) -> None:
        self.sink = sink
        self.secrets = list(secrets)
        parts = urlsplit(sink.url)
        self._https = parts.scheme == "https"
        self._host = parts.hostname or ""
        self._port = parts.port
        self._target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self._context = tls_context(sink.verify_tls, str(sink.ca_file) if sink.ca_file else None) \
            if self._https else None

    def _connection(self) -> http.client.HTTPConnection:
        connection = http.client.HTTPSConnection(self._host, self._port, timeout=self.sink.timeout_sec,
                                                 context=self._context) if self._context is not None \
            else http.client.HTTPConnection(self._host, self._port, timeout=self.sink.timeout_sec)
        connection.response_class = FinalResponse
        return connection

    def headers(self, body: bytes, alert_ids: Sequence[str]) -> dict[str, str]:
        headers = {"Content-Type": "application/json; charset=utf-8", "User-Agent": f"uba/{__version__}",
                   "X-UBA-Delivery-Id": delivery_id(self.sink.name, alert_ids),
                   "X-UBA-Alert-Count": str(len(alert_ids)), "Connection": "close"}
        if self.secrets:
            headers[HEADER] = sign(body, self.secrets)
        return headers

    def send(self, alert_ids: Sequence[str], payloads: Sequence[str]) -> Outcome:
        body = webhook_body(self.sink, alert_ids, payloads)
        connection = self._connection()
        deadline = time.monotonic() + self.sink.timeout_sec
        watch: socket.socket | None = None
        try:
            # the watcher once there is one: http.client lets go of its socket once it read the
            # head of an answer that closes, and a body trickled after it was waited for whole
            with request_deadline(self.sink.timeout_sec, lambda: watch or connection.sock) as expired:
                connection.request("POST", self._target, body=body, headers=self.headers(body, alert_ids))
                if expired.is_set():  # the deadline passed while connecting: no socket was there to cut
                    raise TimeoutError
                watch = _watcher(connection.sock)
                response = connection.getresponse()
                raw = response.read(ANSWER_BYTES + 1)
                answer = raw[:ANSWER_BYTES].decode("utf-8", "replace")
                if expired.is_set():  # cut short, which http.client's read(amt) does not report
                    raise TimeoutError
                outcome = classify_status(response.status, response.reason, response.getheader("Retry-After"))
                if outcome.kind == "ack":
                    outcome = self._acknowledged(outcome, answer, len(raw) <= ANSWER_BYTES, watch, deadline,
                                                 expired)
        except ssl.SSLCertVerificationError as exc:
            return Outcome("stop", f"TLS certificate not trusted for {safe_url(self.sink.url)}: {exc.verify_message}")
        except (OSError, http.client.HTTPException) as exc:  # timeouts, refused, reset, bad answers
            return Outcome("retry", _overdue(self.sink.timeout_sec) if expired.is_set() else _network_error(exc))
        finally:
            connection.close()
            if watch is not None:
                watch.close()
        if outcome.kind != "ack" and answer.strip():
            outcome = Outcome(outcome.kind, f"{outcome.detail}: {one_line(self.without_url_secrets(answer))}",
                              outcome.retry_after)
        return outcome

    def without_url_secrets(self, text: str) -> str:
        """``text`` (a receiver's answer) with our URL's path and query replaced: many servers
        answer a 404 or 405 with ``Cannot POST /services/T0/B0/XXXX``, and that went into the
        logs and the ledger, where a Slack webhook's path (its secret) must never show."""
        parts = urlsplit(self.sink.url)
        secrets = {self._target, parts.path, unquote(parts.path), parts.query, unquote(parts.query)}
        for secret in sorted(secrets - {"", "/"}, key=len, reverse=True):
            text = text.replace(secret, "/..." if secret.startswith("/") else "***")
        return text

    @staticmethod
    def _acknowledged(ack: Outcome, answer: str, whole: bool, watch: socket.socket | None, deadline: float,
                      cut: threading.Event) -> Outcome:
        """The 2xx ``ack``, unless its body reports an error or the receiver reset the
        connection instead of reading the request (then ``retry``: at least once)."""
        if answer_reports_error(answer, whole):
            return Outcome("retry", f"{ack.detail}, but the answer reports an error")
        reset = _closed_without_reset(watch, deadline, cut) if watch is not None else None
        if reset is not None:
            return Outcome("retry", f"{ack.detail}, but {reset}: it did not read the whole request")
        return ack


def _network_error(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError | socket.timeout):
        return "timed out"
    name = type(exc).__name__
    text = getattr(exc, "strerror", None) or str(exc) or name
    return f"{name}: {one_line(text)}"


class SyslogSender:
    """Writes batches of RFC 5424 messages to a TCP (or TLS) syslog collector.

    A batch is acknowledged when every byte was written and the collector, after our
    half-close, closed its side: it has read the whole batch. That is the most TCP
    syslog offers (RFC 5425/6587 have no application acknowledgement): a collector that
    reads and then crashes before writing may lose it, and a batch whose close was not
    seen is sent again (at-least-once; the alert id is in the structured data).

    A close counts only when it answers our end of the batch: a collector that had
    already closed its sending side before we ended the batch (a half-close at accept,
    or after reading part of it) may since have stopped reading, and its kernel still
    acknowledges the bytes it buffers; the batch is sent again, a duplicate for a
    collector that did go on reading (TCP cannot tell the two apart)."""

    def __init__(self, sink: SyslogSink) -> None:
        self.sink = sink
        self._context = tls_context(sink.verify_tls, str(sink.ca_file) if sink.ca_file else None) \
            if sink.tls else None

    def send(self, alert_ids: Sequence[str], payloads: Sequence[str]) -> Outcome:
        data = b"".join(octet_frame(p) for p in payloads)
        try:
            raw = socket.create_connection((self.sink.host, self.sink.port), timeout=self.sink.timeout_sec)
        except OSError as exc:
            return Outcome("retry", _network_error(exc))
        sock: socket.socket = raw
        try:
            if self._context is not None:
                sock = self._context.wrap_socket(raw, server_hostname=self.sink.host)
            sock.sendall(data)
            closed_early = _peer_stopped_sending(sock)  # before our end of the batch
            sock.shutdown(socket.SHUT_WR)  # half-close (for TLS without close_notify: see docs)
            return _unless_closed_early(self._await_close(sock), closed_early)
        except ssl.SSLCertVerificationError as exc:
            return Outcome("stop", f"TLS certificate of {self.sink.host} not trusted: {exc.verify_message}")
        except OSError as exc:
            return Outcome("retry", _network_error(exc))
        finally:
            sock.close()

    def _await_close(self, sock: socket.socket) -> Outcome:
        """Wait (up to timeout_sec) for the collector to close: then it read everything."""
        deadline = time.monotonic() + self.sink.timeout_sec
        while True:
            sock.settimeout(max(0.001, deadline - time.monotonic()))
            try:
                chunk = sock.recv(4096)
            except (ssl.SSLEOFError, ssl.SSLZeroReturnError):
                chunk = b""
            if not chunk:
                return _closed_after_reading(sock, deadline)
            if time.monotonic() >= deadline:
                return Outcome("retry", "the collector did not close the connection after the batch")


TCP_INFO_SIZE = 104  # Linux struct tcp_info; its u32 tcpi_unacked is at byte 24
_UNACKED = struct.Struct("=I")


def _unacked_segments(sock: socket.socket) -> int | None:
    """Segments we sent that the peer's TCP has not acknowledged (Linux ``TCP_INFO``); None elsewhere."""
    option = getattr(socket, "TCP_INFO", None)
    if option is None:
        return None
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, option, TCP_INFO_SIZE)
    except OSError:
        return None
    return int(_UNACKED.unpack_from(info, 24)[0]) if len(info) >= 28 else None


def _closed_after_reading(sock: socket.socket, deadline: float) -> Outcome:
    """The collector closed its side: an acknowledgement only if it had the batch.

    A collector that closes before reading (at its connection limit, crashing, going
    down) sends its FIN and then a reset for the bytes it never took; when the FIN came
    first, it looked like "read everything, then closed" and the batch was marked
    delivered though nobody had it. So the close counts once every byte we sent (our FIN
    included) was acknowledged by the collector's TCP and no reset came: bytes that
    reach a closed socket are reset, never acknowledged. Without ``TCP_INFO`` (not
    Linux) the close alone counts, as before."""
    while True:
        unacked = _unacked_segments(sock)  # read before SO_ERROR: a reset also empties the send queue
        error = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if error:
            return Outcome("retry", f"the collector reset the connection ({os.strerror(error)}): "
                                    "it did not read the batch")
        if not unacked:  # None (not Linux) or 0
            return Outcome("ack", "sent, and the collector closed the connection")
        if time.monotonic() >= deadline:
            return Outcome("retry", "the collector closed the connection before acknowledging the batch")
        time.sleep(0.005)


CLOSED_EARLY = ("the collector closed its side of the connection before the end of the batch "
                "(a half-close or a close at accept): it may not have read the batch, so it is sent again")


def _peer_stopped_sending(sock: socket.socket) -> bool:
    """Whether the collector has already closed its sending side (its FIN, or a reset, came in).

    Its close acknowledges a batch only when it answers our half-close; one that came
    before it says the collector will send nothing more, not that it read what we wrote
    (it may still be reading, or it may never read again). ``POLLRDHUP`` (Linux) sees the
    FIN however many TLS records wait unread in front of it; elsewhere a peek at the plain
    socket (which an unread TLS record can hide)."""
    rdhup = getattr(select, "POLLRDHUP", 0)
    if rdhup and hasattr(select, "poll"):
        poller = select.poll()
        poller.register(sock.fileno(), rdhup)
        return bool(poller.poll(0))  # POLLRDHUP, or POLLHUP / POLLERR (always reported)
    readable, _, _ = select.select([sock], [], [], 0)  # a recv would wait out the socket's timeout
    if not readable:
        return False
    try:
        return socket.socket.recv(sock, 1, socket.MSG_PEEK) == b""
    except OSError:
        return True


def _unless_closed_early(outcome: Outcome, closed_early: bool) -> Outcome:
    """A close seen as an acknowledgement is none when the collector closed before our end of
    the batch: send it again (at least once; a duplicate if the collector did read it)."""
    return Outcome("retry", CLOSED_EARLY) if closed_early and outcome.kind == "ack" else outcome


def sender_for(sink: WebhookSink | SyslogSink, secrets: Sequence[bytes] = ()) -> WebhookSender | SyslogSender:
    """The sender of ``sink``."""
    return WebhookSender(sink, secrets) if isinstance(sink, WebhookSink) else SyslogSender(sink)
