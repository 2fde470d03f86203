"""JSON request bodies: bounded before parsing, parsed off the event loop when large.

FastAPI parses and validates a declared body on the event loop before any dependency
runs: a 2 MB ``/feedback`` body of 100,000 empty items held the loop for 1-2 s (three
at once pushed ``/health`` from 46 ms to 2.4 s), and a bad body was refused with 422
before the API key was looked at. Bodies here are a dependency instead, so

* the route's other dependencies (API key, content type) run first;
* a body with more JSON values than the largest valid request can hold is refused
  with 413 from a count of its punctuation, before it is parsed (parsing 2 MB of
  tiny objects costs ~100 ms of CPU during which no other thread runs);
* a small body (a single event) is parsed in place, which costs microseconds; a
  larger one is parsed and validated in the thread pool, so the loop keeps answering;
* the models count list items before validating them (``schemas.count_limit``).

Parsing is ``json.loads`` followed by the model's python-mode validation, as FastAPI
did, with one difference: an object that repeats a key is a 422 naming the key
(``uba.event_rules.unique_object``), as ingest quarantines such a record, instead of
letting the last value silently win. The body does not appear in FastAPI's own view
of the route, so each route declares it with :func:`request_body` and
``uba.api.openapi`` adds the models to the schema.
"""

from __future__ import annotations

import json
from typing import Generic, TypeVar

from fastapi import Request, status
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails, PydanticCustomError
from starlette.exceptions import HTTPException as StarletteHTTPException

from uba import event_rules as rules
from uba.schema import JsonValue

_ModelT = TypeVar("_ModelT", bound=BaseModel)
INLINE_BODY_BYTES = 16 * 1024
NESTED_TOO_DEEPLY = "nested too deeply"
TOO_MANY_VALUES = "too_many_values"
REPEATED_KEY = "repeated_key"
_STRUCTURE = (b",", b":", b"{", b"[")


def _tokens_outside_strings(raw: bytes) -> int:
    """Commas, colons and opening brackets that are JSON structure, not string content.

    Escapes go first (``\\\\`` then ``\\"``; backslashes occur only inside strings in
    valid JSON), then every other piece between quotes is outside a string.
    """
    text = raw.replace(b"\\\\", b"").replace(b'\\"', b"")
    outside = b"".join(text.split(b'"')[::2])
    return sum(outside.count(c) for c in _STRUCTURE)


def holds_too_many_values(raw: bytes, max_values: int) -> bool:
    """True when ``raw`` has more keys and values than ``max_values`` allows.

    Every key, value and container of a JSON text adds a comma, colon or opening
    bracket, so their count bounds what parsing would build. The raw count (a few
    C-speed scans) settles almost every body; only when punctuation inside strings
    could explain the excess is it recounted outside strings, and a body with more
    strings than ``max_values`` could hold is refused without that.
    """
    if sum(raw.count(c) for c in _STRUCTURE) <= max_values:
        return False
    if raw.count(b'"') - raw.count(b'\\"') > 2 * max_values:
        return True
    return _tokens_outside_strings(raw) > max_values


class JsonBody(Generic[_ModelT]):
    """Dependency that returns the request body validated as ``model``.

    ``max_values`` bounds the keys and values a valid body can have (what the largest
    allowed request holds, with room to spare); ``limit_hint`` names the setting
    that bounds it, for the 413 message.
    """

    def __init__(self, model: type[_ModelT], max_values: int, limit_hint: str) -> None:
        self.model = model
        self.max_values = max_values
        self.limit_hint = limit_hint

    async def __call__(self, request: Request) -> _ModelT:
        raw = await request.body()
        if len(raw) <= INLINE_BODY_BYTES:
            return self.parse(raw)
        return await run_in_threadpool(self.parse, raw)

    def parse(self, raw: bytes) -> _ModelT:
        """The model, or the error FastAPI would raise (locations under ``body``)."""
        if not raw.strip():
            raise RequestValidationError([{"type": "missing", "loc": ("body",), "msg": "Field required",
                                           "input": None}])
        if len(raw) > INLINE_BODY_BYTES and holds_too_many_values(raw, self.max_values):
            raise RequestValidationError([self._too_many_error()])
        data = _loads(raw)
        try:
            return self.model.model_validate(data)
        except ValidationError as exc:
            raise RequestValidationError(
                [{**e, "loc": ("body", *e["loc"])} for e in exc.errors(include_url=False)]
            ) from None

    def _too_many_error(self) -> ErrorDetails:
        error = PydanticCustomError(
            TOO_MANY_VALUES, "holds more JSON values than the largest allowed request ({limit})",
            {"limit": self.limit_hint})
        return {"type": TOO_MANY_VALUES, "loc": ("body",), "msg": error.message(), "input": None}


def _utf8_text(raw: bytes) -> str:
    """The body as UTF-8 text, a leading byte order mark dropped (as ingest does).

    ``json.loads`` given bytes also takes UTF-16 and UTF-32 (guessed from the zero bytes)
    and surrogates encoded in UTF-8 (``\xed\xa0\x80``): an event ingest would refuse as
    not UTF-8 was scored. JSON between systems is UTF-8 (RFC 8259), so anything else is a
    ``UnicodeDecodeError`` here."""
    return raw.decode("utf-8").removeprefix("\ufeff")


def _loads(raw: bytes) -> JsonValue:
    """``json.loads`` with FastAPI's error shapes: 422 ``json_invalid`` for a syntax
    error or bytes that are not UTF-8, 422 ``repeated_key`` (the key as the field) for an
    object that repeats a key, 400 for a text nested too deeply to parse."""
    try:
        data: JsonValue = json.loads(_utf8_text(raw), object_pairs_hook=rules.unique_object)
        return data
    except rules.RepeatedKeyError as exc:
        key = rules.shown(exc.key).encode("utf-8", "replace").decode("utf-8")  # a lone surrogate cannot be sent
        raise RequestValidationError([{"type": REPEATED_KEY, "loc": ("body", key),
                                       "msg": f"{rules.MSG_REPEATED_KEY} {key!r}: an object may hold each "
                                              "key once", "input": None}]) from None
    except json.JSONDecodeError as exc:
        raise RequestValidationError([{"type": "json_invalid", "loc": ("body", exc.pos),
                                       "msg": "JSON decode error", "input": {},
                                       "ctx": {"error": exc.msg}}]) from None
    except UnicodeDecodeError as exc:
        raise RequestValidationError([{"type": "json_invalid", "loc": ("body", exc.start),
                                       "msg": "JSON decode error", "input": {},
                                       "ctx": {"error": "not UTF-8 text"}}]) from None
    except (RecursionError, ValueError) as exc:  # deep nesting; an integer of 5,000 digits
        raise StarletteHTTPException(status.HTTP_400_BAD_REQUEST, NESTED_TOO_DEEPLY) from exc


def request_body(model_name: str, examples: dict[str, JsonValue] | None = None) -> dict[str, JsonValue]:
    """``openapi_extra`` declaring a required JSON body of the named component schema."""
    content: dict[str, JsonValue] = {"schema": {"$ref": f"#/components/schemas/{model_name}"}}
    if examples:
        content["examples"] = examples
    return {"requestBody": {"required": True, "content": {"application/json": content}}}
