"""The one definition of a valid event timestamp and event id, for the API and for ingest.

The API checks one event at a time within a fraction of a millisecond, so each rule has
a per-value form (a compiled regex and integer arithmetic, no frame building); ingest
checks a batch at once, so each rule also has a Polars-expression form. Both forms are
built from the same constants below, and ``tests/test_validate.py`` feeds the same edge
values to both (the API through its request model, ingest through a real file) and
expects the same verdicts.

Timestamp grammar (RFC 3339 date-time): ``YYYY-MM-DDTHH:MM:SS[.fraction]`` followed by
``Z`` or ``±HH:MM``; no offset means UTC (DESIGN.md). As RFC 3339 allows, ``T`` may be a
space or ``t`` and ``Z`` may be ``z``. The fraction has 1-9 digits and is kept to the
microsecond. Dates alone, week or ordinal dates, missing seconds, ``+HHMM``, ``UTC`` and
leap seconds are rejected. The UTC instant must lie in 0001-01-01T00:00:00Z ..
9999-12-31T23:59:59.999999Z, the range every reader of the stored data (Python, Spark,
DuckDB) can represent.

Ids (``event_id``, ``user_id``, ``session_id``) are strings or integers; an integer (also
a JSON number written ``123.0``) is used as its decimal text. Surrounding Unicode
whitespace is removed; what remains must be non-empty, at most ``max_length`` characters
and free of control characters (C0, DEL, C1), U+FFFD (what an invalid UTF-8 byte
becomes) and lone surrogates.
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import polars as pl

KIND_MISSING = "missing field"
KIND_TYPE = "wrong type"
KIND_TIMESTAMP = "bad timestamp"
KIND_OVERSIZED = "oversized string"
KIND_CHARACTERS = "invalid characters"

ID_FIELDS: tuple[str, ...] = ("event_id", "user_id", "session_id")
SHOWN_CHARS = 60
MAX_EXACT_INTEGER = 2**53

# Unicode White_Space: what Polars' strip_chars() removes by default. Python's str.strip()
# would also remove \x1c-\x1f, so both sides strip exactly this set instead.
WHITESPACE = (
    "\t\n\x0b\x0c\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008"
    "\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
)
BAD_CHARS_PATTERN = r"[\x00-\x1F\x7F-\x9F\x{FFFD}]"  # Rust regex syntax, for Polars
_BAD_CHARS = re.compile("[\x00-\x1f\x7f-\x9f\ufffd\ud800-\udfff]")

TIMESTAMP_GRAMMAR = "YYYY-MM-DDTHH:MM:SS[.fraction] with Z or ±HH:MM; no offset means UTC"
_TIMESTAMP_BODY = (
    r"(?P<y>[0-9]{4})-(?P<mo>[0-9]{2})-(?P<d>[0-9]{2})[Tt ]"
    r"(?P<h>[0-9]{2}):(?P<mi>[0-9]{2}):(?P<s>[0-9]{2})(?:\.(?P<f>[0-9]{1,9}))?"
    r"(?P<tz>[Zz]|[+-][0-9]{2}:[0-9]{2})?"
)
_TIMESTAMP = re.compile(_TIMESTAMP_BODY)
MIN_UTC = datetime(1, 1, 1)
MAX_UTC = datetime(9999, 12, 31, 23, 59, 59, 999999)

MSG_TS_SYNTAX = f"is not an RFC 3339 date-time ({TIMESTAMP_GRAMMAR})"
MSG_TS_INVALID = "is not a valid date, time or UTC offset"
MSG_TS_RANGE = "is outside 0001-01-01T00:00:00Z .. 9999-12-31T23:59:59Z in UTC"
MSG_ID_CHARACTERS = "contains control characters or invalid UTF-8"
MSG_ID_EMPTY = "is empty or blank"
ID_TYPE_PREFIX = "must be a string or an integer, not "


def msg_id_too_long(max_length: int) -> str:
    return f"longer than {max_length} characters"


class RuleError(ValueError):
    """A value that breaks a rule: ``kind`` as in quarantine summaries, ``code`` for API errors."""

    def __init__(self, kind: str, code: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.code = code
        self.message = message


# ---------------------------------------------------------------- one value (the API)


def shown(text: str) -> str:
    """A value cut to a readable length, as ingest quotes it in reasons."""
    return text if len(text) <= SHOWN_CHARS else text[:SHOWN_CHARS] + "..."


def parse_timestamp(value: str) -> datetime:
    """An aware UTC datetime from RFC 3339 text; ``RuleError`` says why not."""
    text = value.strip(WHITESPACE)
    match = _TIMESTAMP.fullmatch(text)
    if match is None:
        raise RuleError(KIND_TIMESTAMP, "timestamp_format", MSG_TS_SYNTAX)
    year, month, day, hour, minute, second, fraction, tz = match.groups()
    offset = _offset_minutes(tz)
    try:  # year 0 is a leap year like 2000: check the calendar there, then refuse the range
        local = datetime(int(year) or 2000, int(month), int(day), int(hour), int(minute), int(second),
                         int(fraction[:6].ljust(6, "0")) if fraction else 0)
    except ValueError:
        raise RuleError(KIND_TIMESTAMP, "timestamp_invalid", MSG_TS_INVALID) from None
    if offset is None:
        raise RuleError(KIND_TIMESTAMP, "timestamp_invalid", MSG_TS_INVALID)
    if year == "0000":
        raise RuleError(KIND_TIMESTAMP, "timestamp_range", MSG_TS_RANGE)
    try:
        utc = local - timedelta(minutes=offset) if offset else local
    except OverflowError:
        raise RuleError(KIND_TIMESTAMP, "timestamp_range", MSG_TS_RANGE) from None
    return utc.replace(tzinfo=UTC)


def _offset_minutes(tz: str | None) -> int | None:
    """Minutes east of UTC for 'Z' or '±HH:MM' (0 when absent); None for an impossible offset."""
    if tz is None or tz in ("Z", "z"):
        return 0
    hours, minutes = int(tz[1:3]), int(tz[4:6])
    if hours > 23 or minutes > 59:
        return None
    magnitude = hours * 60 + minutes
    return -magnitude if tz[0] == "-" else magnitude


def id_type_error(value: Any) -> str | None:
    """Why a parsed (JSON or Python) value cannot be an id, or None when it can."""
    if isinstance(value, bool):
        return ID_TYPE_PREFIX + "a boolean"
    if isinstance(value, (str, int)):
        return None
    if isinstance(value, float):
        if not math.isfinite(value) or not value.is_integer():
            return ID_TYPE_PREFIX + "a number with a fraction"
        if abs(value) >= MAX_EXACT_INTEGER:
            return ID_TYPE_PREFIX + "a number too large to be exact"
        return None
    if isinstance(value, dict):
        return ID_TYPE_PREFIX + "an object"
    if isinstance(value, (list, tuple)):
        return ID_TYPE_PREFIX + "an array"
    if value is None:
        return ID_TYPE_PREFIX + "null"
    return ID_TYPE_PREFIX + type(value).__name__


def id_as_text(value: Any) -> str:
    """The text of an id value that passed ``id_type_error`` (integers as decimal text)."""
    if isinstance(value, str):
        return value
    if isinstance(value, float):
        return str(int(value))
    return str(value)  # ValueError for an integer of more than 4,300 digits


def check_id(value: Any, max_length: int) -> str:
    """The stored text of an id; ``RuleError`` says why the value is not one."""
    problem = id_type_error(value)
    if problem is not None:
        raise RuleError(KIND_TYPE, "id_type", problem)
    try:
        text = id_as_text(value).strip(WHITESPACE)
    except ValueError:  # an integer too long to print is far longer than any id limit
        raise RuleError(KIND_OVERSIZED, "id_too_long", msg_id_too_long(max_length)) from None
    if not text:
        raise RuleError(KIND_MISSING, "id_empty", MSG_ID_EMPTY)
    if len(text) > max_length:
        raise RuleError(KIND_OVERSIZED, "id_too_long", msg_id_too_long(max_length))
    if _BAD_CHARS.search(text):
        raise RuleError(KIND_CHARACTERS, "id_characters", MSG_ID_CHARACTERS)
    return text


# ---------------------------------------------------------------- a column (ingest)


def strip_text(text: pl.Expr) -> pl.Expr:
    """The same whitespace removal as the per-value rules."""
    return text.str.strip_chars(WHITESPACE)


def has_bad_chars(text: pl.Expr) -> pl.Expr:
    return text.str.contains(BAD_CHARS_PATTERN)


def timestamp_parts(text: pl.Expr) -> pl.Expr:
    """Named pieces of a stripped timestamp (every field null when the grammar does not match)."""
    return text.str.extract_groups(f"^{_TIMESTAMP_BODY}$")


def _offset_minutes_expr(tz: pl.Expr) -> pl.Expr:
    hours = tz.str.slice(1, 2).cast(pl.Int32, strict=False)
    minutes = tz.str.slice(4, 2).cast(pl.Int32, strict=False)
    magnitude = hours * 60 + minutes
    return (
        pl.when(tz.is_null() | tz.is_in(["Z", "z"])).then(pl.lit(0, pl.Int32))
        .when((hours <= 23) & (minutes <= 59))
        .then(pl.when(tz.str.starts_with("-")).then(-magnitude).otherwise(magnitude))
        .otherwise(pl.lit(None, pl.Int32))
    )


def local_timestamp(parts: pl.Expr) -> pl.Expr:
    """Naive UTC datetime before the range check; null for an impossible date, time or offset."""
    field = parts.struct.field
    fraction = field("f").fill_null("0").str.pad_end(6, "0").str.slice(0, 6)
    canonical = pl.concat_str(
        field("y"), pl.lit("-"), field("mo"), pl.lit("-"), field("d"), pl.lit("T"),
        field("h"), pl.lit(":"), field("mi"), pl.lit(":"), field("s"), pl.lit("."), fraction,
    )
    naive = canonical.str.to_datetime("%Y-%m-%dT%H:%M:%S%.f", strict=False, time_unit="us")
    clock = [(field(name).cast(pl.Int32, strict=False) <= top) for name, top in (("h", 23), ("mi", 59), ("s", 59))]
    checked = pl.when(pl.all_horizontal(clock)).then(naive)  # the parser rolls 23:59:60 over to the next day
    return checked - pl.duration(minutes=_offset_minutes_expr(field("tz")), time_unit="us")


def in_utc_range(naive_utc: pl.Expr) -> pl.Expr:
    return naive_utc.is_between(pl.lit(MIN_UTC), pl.lit(MAX_UTC))


def id_dtype_error(column: pl.Expr, dtype: pl.DataType) -> pl.Expr | None:
    """Per-row reason a typed column (Parquet, a frame) cannot hold ids, or None when it always can."""
    if dtype == pl.String or dtype == pl.Null or dtype.is_integer():
        return None
    if isinstance(dtype, (pl.Categorical, pl.Enum, pl.Binary)):
        return None
    given = column.is_not_null()
    if dtype.is_float() or dtype.is_decimal():
        number = column.cast(pl.Float64)
        return (
            pl.when(given & ~(number.is_finite() & (number == number.floor())))
            .then(pl.lit(ID_TYPE_PREFIX + "a number with a fraction"))
            .when(given & (number.abs() >= MAX_EXACT_INTEGER))
            .then(pl.lit(ID_TYPE_PREFIX + "a number too large to be exact"))
        )
    if dtype == pl.Boolean:
        what = "a boolean"
    elif isinstance(dtype, pl.Struct):
        what = "an object"
    elif isinstance(dtype, (pl.List, pl.Array)):
        what = "an array"
    else:
        what = f"a {dtype} value"
    return pl.when(given).then(pl.lit(ID_TYPE_PREFIX + what))
