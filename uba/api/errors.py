"""One error shape for every 4xx: ``{"detail": [{"field", "message", "value"}]}``.

FastAPI's default 422 body repeats the whole input and nests locations; clients (and
people reading logs) want the field path, a sentence, and the offending value. Values
are made JSON-safe and short, because the value that failed may be a NaN, a 1 MB
string or a nested structure.
"""

from __future__ import annotations

import math
from typing import Any, TypedDict

from fastapi import Request, status
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic_core import ErrorDetails
from starlette.exceptions import HTTPException as StarletteHTTPException

from uba.api.body import TOO_MANY_VALUES
from uba.api.middleware import current_request_id, printable
from uba.api.schemas import BATCH_TOO_LARGE, ErrorBody, ShownValue
from uba.logs import get_logger

log = get_logger("api.errors")
MAX_VALUE_CHARS = 80
_TOO_LARGE_TYPES = frozenset({BATCH_TOO_LARGE, TOO_MANY_VALUES})

# FastAPI's type of a route's ``responses``: OpenAPI fragments holding a pydantic ``model``.
OpenApiResponses = dict[int | str, dict[str, Any]]


class FieldErrorItem(TypedDict):
    """One entry of an error answer's ``detail`` (``schemas.FieldError`` documents it)."""

    field: str
    message: str
    value: ShownValue


# Declared in the OpenAPI schema of every route that can answer them (schemathesis checks
# that no undeclared status is ever sent).
AUTH_ERRORS: OpenApiResponses = {
    401: {"model": ErrorBody, "description": "Missing or invalid X-API-Key (when keys are configured); "
                                             "checked before the body is read"},
}
BODY_LIMIT_ERROR: OpenApiResponses = {
    413: {"model": ErrorBody, "description": "Body over api.max_body_bytes, or more items than api.max_batch"},
}
BODY_ERRORS: OpenApiResponses = {
    400: {"model": ErrorBody, "description": "Body cannot be parsed as JSON (nested too deeply, "
                                             "an integer too long to read)"},
    **BODY_LIMIT_ERROR,
    415: {"model": ErrorBody, "description": "Body is not application/json"},
}


def safe_value(value: object) -> ShownValue:
    """A short, JSON-serialisable echo of the offending value."""
    if value is None or isinstance(value, bool | int):
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) > 10**18:
            return str(value)[:MAX_VALUE_CHARS]
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, str):
        value = value.encode("utf-8", "replace").decode("utf-8")  # a lone surrogate would fail the answer
        return value if len(value) <= MAX_VALUE_CHARS else value[:MAX_VALUE_CHARS] + "..."
    if isinstance(value, dict):
        return f"<object with {len(value)} keys>"
    if isinstance(value, list | tuple):
        return f"<array of {len(value)} items>"
    if isinstance(value, bytes):
        return f"<{len(value)} bytes>"
    return str(value)[:MAX_VALUE_CHARS]


def field_path(loc: tuple[int | str, ...]) -> str:
    parts = list(loc)
    if parts and parts[0] in ("body", "query", "header", "path"):
        parts = parts[1:]
    return ".".join(str(p) for p in parts) or "body"


def describe_error(error: ErrorDetails) -> FieldErrorItem:
    kind = error.get("type", "")
    if kind == "json_invalid":
        position = error.get("loc", ("body",))[-1]
        reason = (error.get("ctx") or {}).get("error", "invalid JSON")
        where = f" (at character {position})" if isinstance(position, int) else ""
        return {"field": "body", "message": f"invalid JSON: {reason}{where}", "value": None}
    if kind == "missing":
        field = field_path(tuple(error.get("loc", ())))
        message = "request body is required" if field == "body" else "field required"
        return {"field": field, "message": message, "value": None}
    return {
        "field": field_path(tuple(error.get("loc", ()))),
        "message": error.get("msg", "invalid value"),
        "value": safe_value(error.get("input")),
    }


async def validation_error_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = list(exc.errors())
    code = status.HTTP_422_UNPROCESSABLE_CONTENT
    if any(e.get("type") in _TOO_LARGE_TYPES for e in errors):
        code = status.HTTP_413_CONTENT_TOO_LARGE
    return JSONResponse(status_code=code, content={"detail": [describe_error(e) for e in errors[:50]]})


async def http_error_handler(request: Request, exc: Exception) -> Response:
    """FastAPI's own body-parse failure (e.g. JSON nested too deeply) in the field shape."""
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == status.HTTP_400_BAD_REQUEST and isinstance(exc.detail, str):
        detail = [{"field": "body", "message": "cannot parse the request body as JSON "
                   "(malformed or nested too deeply)", "value": None}]
        return JSONResponse(status_code=400, content={"detail": detail})
    return await http_exception_handler(request, exc)


async def unexpected_error_handler(request: Request, exc: Exception) -> JSONResponse:
    """A bug: log it with its traceback, answer a plain 500 without internals."""
    request_id = current_request_id()
    log.error("unhandled error on %s %s request_id=%s", printable(request.method),
              printable(request.url.path), request_id,
              exc_info=exc)
    headers = {"X-Request-ID": request_id} if request_id else None
    return JSONResponse(status_code=500, content={"detail": "internal server error"}, headers=headers)
