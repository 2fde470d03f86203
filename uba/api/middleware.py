"""Request body cap, and request ids on every response and access log line.

The body is counted as the app reads it and refused with 413 the moment it passes the
cap, so neither a lying ``Content-Length`` nor a chunked upload can make the JSON parser
hold an unbounded body. Nothing is read here: the first read happens inside the matched
route, after its API-key dependency (``uba.api.auth.require_api_key``), so a request
without a valid key is a 401 whatever its size, and a 413 or a client that closes
mid-body (499) is counted under the route's template in the metrics.
"""

from __future__ import annotations

import contextvars
import os
import re
import time

from fastapi import HTTPException
from starlette.requests import ClientDisconnect

from uba.api.access_log import AccessLog
from uba.api.metrics import ASGIApp, Message, Receive, Scope, Send, final_status

_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


def _too_large(limit: int) -> list[dict[str, object]]:
    return [{
        "field": "body",
        "message": f"request body is larger than the limit of {limit} bytes (api.max_body_bytes)",
        "value": None,
    }]


def _declared_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


class BodyTooLargeError(HTTPException):
    """413 raised from the app's own read of a body over ``api.max_body_bytes`` (FastAPI's
    HTTPException, whose ``detail`` may be the field list; Starlette's takes text only)."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, detail=_too_large(limit))


class BodyLimitMiddleware:
    """Caps request bodies at ``limit`` bytes while the app reads them; never reads itself.

    A declared ``Content-Length`` over the cap is refused at the first read, before any
    byte is taken; a chunked body when the running total passes the cap. The refusal is
    a :class:`BodyTooLargeError` raised from ``receive`` inside the route, answered 413
    by the app's HTTP error handler. A client that goes away mid-body ends the request
    without an answer (no traceback, no 500), counted as 499 by the metrics.
    """

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") not in _BODY_METHODS:
            await self.app(scope, receive, send)
            return
        declared = _declared_length(scope)
        size = 0
        complete = False

        async def limited() -> Message:
            nonlocal size, complete
            if complete:  # the whole body was delivered: only a disconnect can follow
                return await receive()
            if declared is not None and declared > self.limit:
                raise BodyTooLargeError(self.limit)
            message = await receive()
            if message["type"] == "http.request":
                size += len(message.get("body", b""))
                if size > self.limit:
                    raise BodyTooLargeError(self.limit)
                complete = not message.get("more_body", False)
            return message

        try:
            await self.app(scope, limited, send)
        except ClientDisconnect:
            return  # the client closed mid-body: nobody to answer


# --- request ids ----------------------------------------------------------------------

REQUEST_ID_HEADER = b"x-request-id"
_VALID_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")  # nginx's rule (configs/nginx/uba.conf.template)
_request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("uba_request_id", default=None)


def current_request_id() -> str | None:
    """The id of the request being handled in this task (for log lines and error answers)."""
    return _request_id.get()


def request_id_from(scope: Scope) -> str:
    """The caller's X-Request-ID when it is a plain token, else a fresh one (32 hex digits),
    so nginx's id (or a client's) reaches the app logs and anything odd is not echoed."""
    for name, value in scope.get("headers", ()):
        if name == REQUEST_ID_HEADER:
            text: str = value.decode("latin-1")  # ASGI header values are bytes
            if _VALID_REQUEST_ID.fullmatch(text):
                return text
            break
    return os.urandom(16).hex()  # as random as uuid4().hex, without building a UUID


def printable(text: str) -> str:
    """``text`` with every non-printable character (newline, CR, ESC, U+2028, a lone
    surrogate...) written as a Python escape, and backslash and double quote escaped too.

    The server decodes ``%0a`` in a URL into a real newline; logged as is, one request
    could forge a whole access line (or colour a terminal) in the text log format.
    """
    if text.isprintable() and "\\" not in text and '"' not in text:
        return text
    out = []
    for ch in text:
        if ch in ('\\', '"'):
            out.append("\\" + ch)
        elif ch.isprintable():
            out.append(ch)
        else:
            code = ord(ch)
            out.append(f"\\x{code:02x}" if code < 0x100 else
                       f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}")
    return "".join(out)


class RequestIdMiddleware:
    """Outermost layer: sets the request id, echoes it on the response, writes the access line.

    The id lives in a context variable, so the 500 handler (which Starlette runs outside
    the user middleware) can still log and answer it.
    """

    def __init__(self, app: ASGIApp, access_log: AccessLog | None = None) -> None:
        self.app = app
        self.access_log = access_log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = request_id_from(scope)
        _request_id.set(request_id)  # one task per request: no reset needed, and the 500 handler sees it
        sent: int | None = None
        error: BaseException | None = None
        started = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal sent
            if message["type"] == "http.response.start":
                sent = message["status"]
                headers = [(k, v) for k, v in message.get("headers", ()) if k.lower() != REQUEST_ID_HEADER]
                message = {**message, "headers": [*headers, (REQUEST_ID_HEADER, request_id.encode())]}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except BaseException as exc:
            error = exc
            raise
        finally:
            if self.access_log is not None:
                self._log(self.access_log, scope, final_status(sent, error), time.perf_counter() - started,
                          request_id)

    @staticmethod
    def _log(access_log: AccessLog, scope: Scope, status: int, seconds: float, request_id: str) -> None:
        """One access line; the caller-controlled parts are escaped (``printable``) and the
        request id is already a plain token (``request_id_from``)."""
        client = scope.get("client")
        where = f"{client[0]}:{client[1]}" if client else "-"
        access_log.write(where, printable(scope.get("method", "")), printable(scope.get("path", "")),
                         status, seconds, request_id)
