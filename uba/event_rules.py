"""The one definition of a valid event, for the API and for ingest: timestamps, ids,
categories, JSON value types and repeated keys.

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
and free of control characters (C0, DEL, C1), invisible and format characters (U+200B..
U+200F, U+FEFF, bidi controls, U+2060.., variation selectors, tags: Unicode's format
category and default-ignorable code points), line and paragraph separators (U+2028,
U+2029), noncharacters, U+FFFD (what an invalid UTF-8 byte becomes) and lone surrogates.
The set is spelled out below as code point ranges, so Python's ``re`` and Polars' regex
engine (whose Unicode tables may be of another version) refuse exactly the same ids.

Categories (``event_type``, ``device_type``): surrounding whitespace and ASCII letter
case are ignored (``" LOGIN "`` is ``login``); the configured spelling is used. Other
case mappings (a Kelvin sign for ``k``) are not applied.

JSON values have types, and a field takes only its own (``json_type_error``): ids a
string or an integer, ``timestamp`` and the categories a string, the numeric fields
(``session_duration_sec``, ``events_in_session``, ``hour_of_day``, ``day_of_week``) a
number, so ``"60"`` in JSON is refused by the API and by ingest alike. Text formats
(CSV, text columns of Parquet) carry no types: there the text must spell the value.
An object that repeats a key is refused (``repeated_key``): parsers disagree on which
value wins.

Analyst text (``check_text``: the analyst of a verdict or a triage action, a note of a
verdict, a triage action or a suppression rule) is free text, but the same text for every
way in (``POST /feedback``, ``PATCH /alerts``, a feedback CSV, ``uba-batch alerts``,
``uba-batch suppress add``): Windows line ends become ``\n``, surrounding whitespace is
removed, and what remains may not hold a control character (C0, DEL, C1), a format
character (bidi overrides and isolates, zero-width space, U+FEFF, soft hyphen), a line or
paragraph separator (U+2028, U+2029) or a lone surrogate. A note may hold ``\n`` and
``\t`` (a multi-line note is legitimate), a name no control at all; both may hold the
zero-width joiners U+200C and U+200D that Persian, Indic scripts and emoji sequences need.
Such text is printed by the CLI and read by people: an ANSI escape, a carriage return or a
right-to-left override in it rewrote or disguised what the reader's terminal showed.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import polars as pl

KIND_MISSING = "missing field"
KIND_TYPE = "wrong type"
KIND_TIMESTAMP = "bad timestamp"
KIND_OVERSIZED = "oversized string"
KIND_CHARACTERS = "invalid characters"

ID_FIELDS: tuple[str, ...] = ("event_id", "user_id", "session_id")
NUMBER_FIELDS: tuple[str, ...] = ("session_duration_sec", "events_in_session", "hour_of_day", "day_of_week")
TEXT_FIELDS: tuple[str, ...] = ("timestamp", "event_type", "device_type")
SHOWN_CHARS = 60
MAX_EXACT_INTEGER = 2**53

# Unicode White_Space: what Polars' strip_chars() removes by default. Python's str.strip()
# would also remove \x1c-\x1f, so both sides strip exactly this set instead.
WHITESPACE = (
    "\t\n\x0b\x0c\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008"
    "\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
)
# Code points an id may not hold once its surrounding whitespace is removed: controls,
# Unicode's format characters (Cf) and default-ignorable code points (zero-width spaces and
# joiners, bidi controls, U+FEFF, Hangul fillers, variation selectors, tags), line and
# paragraph separators, noncharacters and U+FFFD. Spelled out as ranges (Unicode 15) so
# both regex engines refuse exactly the same ids whatever their own Unicode tables say.
BAD_ID_RANGES: tuple[tuple[int, int], ...] = (
    (0x00, 0x1F), (0x7F, 0x9F), (0xAD, 0xAD), (0x34F, 0x34F), (0x600, 0x605), (0x61C, 0x61C),
    (0x6DD, 0x6DD), (0x70F, 0x70F), (0x890, 0x891), (0x8E2, 0x8E2), (0x115F, 0x1160),
    (0x17B4, 0x17B5), (0x180B, 0x180F), (0x200B, 0x200F), (0x2028, 0x202E), (0x2060, 0x206F),
    (0x3164, 0x3164), (0xFDD0, 0xFDEF), (0xFE00, 0xFE0F), (0xFEFF, 0xFEFF), (0xFFA0, 0xFFA0),
    (0xFFF0, 0xFFFB), (0xFFFD, 0xFFFF), (0x110BD, 0x110BD), (0x110CD, 0x110CD),
    (0x13430, 0x1343F), (0x1BCA0, 0x1BCA3), (0x1D173, 0x1D17A), (0xE0000, 0xE0FFF),
    *((plane + 0xFFFE, plane + 0xFFFF) for plane in range(0x10000, 0x110000, 0x10000)),
)
BAD_CHARS_PATTERN = "[" + "".join(f"\\x{{{a:X}}}-\\x{{{b:X}}}" for a, b in BAD_ID_RANGES) + "]"  # Rust regex
_BAD_CHARS = re.compile(
    "[" + "".join(f"\\U{a:08x}-\\U{b:08x}" for a, b in BAD_ID_RANGES) + "\\ud800-\\udfff]"
)

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
MSG_ID_CHARACTERS = "contains control, invisible or format characters, or invalid UTF-8"
MSG_ID_EMPTY = "is empty or blank"
ID_TYPE_PREFIX = "must be a string or an integer, not "
MSG_NUMBER_TYPE = "must be a number, not "
MSG_STRING_TYPE = "must be a string, not "
MSG_REPEATED_KEY = "repeats the key"
_ASCII_UPPER = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
_ASCII_LOWER = str.maketrans(_ASCII_UPPER, _ASCII_UPPER.lower())


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
        return _utc_of_year_zero(local, offset).replace(tzinfo=UTC)
    try:
        utc = local - timedelta(minutes=offset) if offset else local
    except OverflowError:
        raise RuleError(KIND_TIMESTAMP, "timestamp_range", MSG_TS_RANGE) from None
    return utc.replace(tzinfo=UTC)


def _utc_of_year_zero(stand_in: datetime, offset: int) -> datetime:
    """The UTC instant of a local time in year 0 (held as year 2000, which has the same
    calendar), or ``RuleError``: in range only when a negative offset carries it into
    0001-01-01 UTC (``0000-12-31T23:30:00-00:45``), as ingest's column rule finds."""
    utc = stand_in - timedelta(minutes=offset)
    if utc.year != 2001:
        raise RuleError(KIND_TIMESTAMP, "timestamp_range", MSG_TS_RANGE)
    return utc.replace(year=1)


def _offset_minutes(tz: str | None) -> int | None:
    """Minutes east of UTC for 'Z' or '±HH:MM' (0 when absent); None for an impossible offset."""
    if tz is None or tz in ("Z", "z"):
        return 0
    hours, minutes = int(tz[1:3]), int(tz[4:6])
    if hours > 23 or minutes > 59:
        return None
    magnitude = hours * 60 + minutes
    return -magnitude if tz[0] == "-" else magnitude


def id_type_error(value: object) -> str | None:
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


def id_as_text(value: object) -> str:
    """The text of an id value that passed ``id_type_error`` (integers as decimal text)."""
    if isinstance(value, str):
        return value
    if isinstance(value, float):
        return str(int(value))
    return str(value)  # ValueError for an integer of more than 4,300 digits


def bad_id_char(text: str) -> str | None:
    """The first character of ``text`` an id may not hold (``BAD_ID_RANGES``), or None."""
    found = _BAD_CHARS.search(text)
    return found.group() if found else None


def check_id(value: object, max_length: int) -> str:
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


def _json_kind(value: object) -> str:
    """What a parsed JSON value is, as reasons name it."""
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, (list, tuple)):
        return "an array"
    return type(value).__name__


def json_type_error(field: str, value: object) -> str | None:
    """Why a parsed JSON value cannot be ``field`` by its type alone (None: it can, or it is null).

    Ids take a string or an integer, ``timestamp`` and the categories a string, the
    numeric fields a number (``true`` is not 1, ``"60"`` is not 60). Text formats have no
    types, so ingest applies this only to values a JSON reader parsed.
    """
    if value is None:
        return None
    if field in ID_FIELDS:
        return id_type_error(value)
    if field in NUMBER_FIELDS:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return MSG_NUMBER_TYPE + _json_kind(value)
        return None
    if field in TEXT_FIELDS and not isinstance(value, str):
        return MSG_STRING_TYPE + _json_kind(value)
    return None


def field_json_types(field: str) -> tuple[type, ...]:
    """The Python types of parsed JSON values ``field`` takes without a closer look."""
    if field in NUMBER_FIELDS:
        return (int, float, type(None))  # bool is a subclass of int: checked by type identity
    if field in ID_FIELDS:
        return (str, int, type(None))
    return (str, type(None))


def category_key(text: str) -> str:
    """What a category is compared by: surrounding whitespace removed, ASCII letters lowered."""
    return text.strip(WHITESPACE).translate(_ASCII_LOWER)


def category_lookup(allowed: tuple[str, ...]) -> dict[str, str]:
    """Comparison key -> configured spelling, for ``category_key`` of a value."""
    return {category_key(name): name for name in allowed}


def msg_category(allowed: tuple[str, ...]) -> str:
    return f"not one of {', '.join(allowed)}"


def category_pattern(allowed: tuple[str, ...]) -> str:
    """A regex (JSON Schema / ECMA 262 and Python alike) matching exactly the accepted spellings."""
    space = "".join(f"\\u{ord(c):04x}" for c in WHITESPACE)

    def spelled(name: str) -> str:
        parts = []
        for char in name.strip(WHITESPACE):
            if char.isascii() and char.isalpha():
                parts.append(f"[{char.upper()}{char.lower()}]")
            elif char.isascii() and char.isalnum():
                parts.append(char)
            elif ord(char) <= 0xFFFF:
                parts.append(f"\\u{ord(char):04x}")
            else:
                parts.append(re.escape(char))
        return "".join(parts)

    return f"^[{space}]*(?:{'|'.join(spelled(name) for name in allowed)})[{space}]*$"


class RepeatedKeyError(ValueError):
    """A JSON object that repeats a key (raised by ``unique_object``)."""

    def __init__(self, key: str) -> None:
        super().__init__(f"{MSG_REPEATED_KEY} {shown(key)!r}")
        self.key = key


def repeated_key(pairs: Sequence[tuple[str, object]]) -> str | None:
    """The first key that ``pairs`` (one JSON object, in order) repeats, or None."""
    seen: set[str] = set()
    for key, _ in pairs:
        if key in seen:
            return key
        seen.add(key)
    return None


def unique_object(pairs: Sequence[tuple[str, object]]) -> dict[str, object]:
    """``object_pairs_hook`` for ``json``: the object, or ``RepeatedKeyError`` naming the key."""
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise RepeatedKeyError(repeated_key(pairs) or "")
    return obj


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


CLOCK_FIELDS: tuple[str, ...] = ("hour_of_day", "day_of_week")
CLOCK_NOTES = {"hour_of_day": "the UTC hour", "day_of_week": "the UTC weekday, 0=Monday"}


def clock_fields(utc: pl.Expr) -> dict[str, pl.Expr]:
    """``hour_of_day`` and ``day_of_week`` of a UTC datetime column as they are stored: the
    hour (0-23) and the weekday (0 = Monday, DESIGN.md), both in UTC. Ingest derives the
    stored values from the timestamp with these, and scoring checks another tool's parts
    against them (``uba.io``), so the two can never disagree on what an event's hour is."""
    return {"hour_of_day": utc.dt.hour(), "day_of_week": utc.dt.weekday() - 1}


def category_expr(text: pl.Expr, allowed: tuple[str, ...]) -> pl.Expr:
    """The configured spelling of each stripped value (``category_key``), null when none matches."""
    folded = text.str.replace_many(list(_ASCII_UPPER), list(_ASCII_UPPER.lower()))
    return folded.replace_strict(category_lookup(allowed), default=None, return_dtype=pl.String)


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


# ---------------------------------------------------------------- analyst text

MAX_ANALYST = 256  # characters of an analyst's name, every way in (API, feedback CSV, triage)
MAX_NOTE = 2000  # characters of a note (a verdict's, a triage action's, a suppression rule's)

# Code points analyst text may not hold: controls (Cc: C0, DEL, C1), format characters
# (Cf: bidi controls, zero-width space, U+FEFF, soft hyphen, tags) except the zero-width
# joiners U+200C and U+200D, and line and paragraph separators (Zl, Zp); lone surrogates
# too. Spelled out (Unicode 15) like BAD_ID_RANGES, so the check and the JSON Schema
# pattern the API publishes (``uba.api.schemas``) refuse exactly the same text.
TEXT_REFUSED_RANGES: tuple[tuple[int, int], ...] = (
    (0x00, 0x1F), (0x7F, 0x9F), (0xAD, 0xAD), (0x600, 0x605), (0x61C, 0x61C), (0x6DD, 0x6DD),
    (0x70F, 0x70F), (0x890, 0x891), (0x8E2, 0x8E2), (0x180E, 0x180E), (0x200B, 0x200B),
    (0x200E, 0x200F), (0x2028, 0x202E), (0x2060, 0x2064), (0x2066, 0x206F), (0xFEFF, 0xFEFF),
    (0xFFF9, 0xFFFB), (0x110BD, 0x110BD), (0x110CD, 0x110CD), (0x13430, 0x1343F),
    (0x1BCA0, 0x1BCA3), (0x1D173, 0x1D17A), (0xE0001, 0xE0001), (0xE0020, 0xE007F),
)
# A note may also hold tabs and line breaks (U+0009, U+000A): the same set without them.
NOTE_REFUSED_RANGES: tuple[tuple[int, int], ...] = ((0x00, 0x08), (0x0B, 0x1F), *TEXT_REFUSED_RANGES[1:])


def _text_class(ranges: tuple[tuple[int, int], ...]) -> re.Pattern[str]:
    return re.compile("[" + "".join(f"\\U{a:08x}-\\U{b:08x}" for a, b in ranges) + "\\ud800-\\udfff]")


_BAD_NAME_CHARS = _text_class(TEXT_REFUSED_RANGES)
_BAD_NOTE_CHARS = _text_class(NOTE_REFUSED_RANGES)
# What an error calls a refused character, by its Unicode category.
_TEXT_CHAR_KINDS = {"Cc": "control character", "Cf": "format character", "Zl": "line separator",
                    "Zp": "paragraph separator", "Cs": "lone surrogate"}


def bad_text_char(text: str, lines: bool) -> str | None:
    """The first character of ``text`` that analyst text may not hold (TEXT_REFUSED_RANGES,
    a lone surrogate), or None. ``lines``: a note, which may hold line breaks and tabs;
    else a one-line name."""
    found = (_BAD_NOTE_CHARS if lines else _BAD_NAME_CHARS).search(text)
    return found.group() if found else None


def msg_text_char(char: str) -> str:
    """Why analyst text holding ``char`` is refused, naming its code point (and its Unicode
    name when it has one: controls have none)."""
    kind = _TEXT_CHAR_KINDS.get(unicodedata.category(char), "format character")
    name = unicodedata.name(char, "")
    return f"holds the {kind} U+{ord(char):04X}" + (f" ({name})" if name else "")


def check_text(value: str | None, lines: bool) -> str | None:
    """Analyst text as stored (None for none or blank); ``RuleError`` when it holds a
    character ``bad_text_char`` refuses. CR LF (a note typed on Windows, a spreadsheet's
    multi-line cell) is read as a line break; surrounding whitespace is removed."""
    if value is None:
        return None
    text = value.replace("\r\n", "\n").strip(WHITESPACE)
    bad = bad_text_char(text, lines)
    if bad is not None:
        raise RuleError(KIND_CHARACTERS, "text_characters", msg_text_char(bad))
    return text or None
