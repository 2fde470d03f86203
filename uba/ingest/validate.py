"""Split raw events into stored events and quarantined rows, each rejection with a reason.

Raw input arrives with any types: CSV gives strings, JSON numbers/strings/booleans/nulls,
Parquet whatever its writer chose. Every value is first turned into text exactly once,
then parsed from that text, so the same event gives the same result whatever the file
format, and a bad value becomes a quarantined row instead of a crash.

Rules (first failing check wins, in this order):

* a reader error (``read_error`` column, e.g. a line that is not JSON)
* an empty row; then a missing required field (column absent, null, empty or blank)
* a value of the wrong JSON type (``uba.event_rules.json_type_error``: an id that is
  neither a string nor an integer, a number given as a JSON string, a category or
  timestamp that is not a string; JSON readers say so in the ``type_error`` column) or
  an id column of a type that cannot hold ids (typed columns are judged by their type)
* a field holding bytes of the file that were not UTF-8 (the CSV reader's ``not_utf8``
  note: the line and byte, and to save the file as UTF-8)
* ``event_id`` / ``user_id``: longer than ``max_string_length`` characters, or
  containing control characters / invalid UTF-8
* ``timestamp``: RFC 3339 date-time (``YYYY-MM-DDTHH:MM:SS[.fraction]`` with ``Z`` or
  ``±HH:MM``; naive means UTC) within years 0001-9999 in UTC, converted to UTC
* ``event_type`` / ``device_type``: one of the configured categories; surrounding
  whitespace and ASCII letter case are ignored and the configured spelling is stored
* ``session_duration_sec``: a finite number, ``0 <= x <= max_session_duration_sec``
* ``events_in_session``: an integer (``3`` or ``3.0``), ``1 <= n <= max_events_in_session``
* ``hour_of_day`` / ``day_of_week`` (optional): integers in 0-23 / 0-6 (0=Monday) that
  agree with the UTC timestamp; the stored values are always derived from it
* ``session_id`` (optional): same string rules as the ids
* ``event_id`` already stored for the event's UTC date, then repeated within the input
  for that date (the first otherwise-valid occurrence is kept). Uniqueness is enforced
  per UTC date: checking every stored day would make each ingest cost grow with history.

Ids are stripped of surrounding whitespace; an integer id is stored as its decimal text.
The timestamp, id, category and JSON type rules are those of ``uba.event_rules``, which
the API applies to one event at a time: both places accept and refuse the same values.

Typed columns are turned into text without ever failing: a datetime, date or time
outside what the text form can hold (years 0001-9999) reads ``<n> <unit> since
1970-01-01T00:00:00Z`` (and is then refused as a timestamp), bytes that are not UTF-8
are decoded with U+FFFD (refused in ids and categories), nested values become JSON
text. ``unreadable_columns`` names the column types that have no text form at all
(durations): ingest refuses a file with such an event field before reading its rows.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass

import polars as pl
from polars.datatypes import DataTypeClass
from polars.expr.whenthen import ChainedThen, Then

from uba import event_rules as rules
from uba.event_rules import KIND_CHARACTERS, KIND_MISSING, KIND_OVERSIZED, KIND_TIMESTAMP, KIND_TYPE
from uba.schema import EVENT_SCHEMA, PARTITION_COLUMN, RAW_FIELDS, REQUIRED_FIELDS
from uba.settings import EventSettings

SOURCE_FILE = "source_file"
SOURCE_ROW = "source_row"
READ_ERROR = "read_error"
TYPE_ERROR = "type_error"
NOT_UTF8 = "not_utf8"  # a text reader's note: where the record's first byte that is not UTF-8 is
REASON = "reason"
REASON_KIND = "reason_kind"
META_FIELDS: tuple[str, ...] = (SOURCE_FILE, SOURCE_ROW, READ_ERROR, TYPE_ERROR, NOT_UTF8)

# Extra columns of the rejected frame besides the raw fields: the ingest layer drops
# REASON_KIND and the partition column before writing QUARANTINE_SCHEMA parts.
REJECTED_COLUMNS: tuple[str, ...] = (
    *RAW_FIELDS, REASON, REASON_KIND, SOURCE_FILE, SOURCE_ROW, PARTITION_COLUMN,
)

# Reason kinds: stable names for summaries and alerting.
KIND_UNREADABLE = "unreadable record"
KIND_RANGE = "out of range"
KIND_CATEGORY = "unknown category"
KIND_DISAGREE = "disagrees with timestamp"
KIND_DUPLICATE = "duplicate event_id"
REASON_KINDS: tuple[str, ...] = (
    KIND_UNREADABLE, KIND_MISSING, KIND_TYPE, KIND_RANGE, KIND_CATEGORY, KIND_TIMESTAMP,
    KIND_DISAGREE, KIND_DUPLICATE, KIND_OVERSIZED, KIND_CHARACTERS,
)

ID_FIELDS: tuple[str, ...] = ("event_id", "user_id")
SHOWN_CHARS = rules.SHOWN_CHARS
MAX_EXACT_INTEGER = float(rules.MAX_EXACT_INTEGER)
_ROW = "_row"
_CHECK = "_check"
_DATE = "_date"
_STORED = "_stored"
_FIRST_ROW = "_first_row"
REPLACEMENT_CHAR = "\ufffd"  # what a reader decodes a byte that is not UTF-8 to


@dataclass(frozen=True)
class _Check:
    """One rule: ``failed`` marks bad rows; ``message`` is only evaluated for rejected rows."""

    kind: str
    failed: pl.Expr
    message: pl.Expr


def _v(field: str) -> str:
    """Column with the trimmed text of a field, null when absent, empty or blank."""
    return f"_v_{field}"


# ---------------------------------------------------------------- text conversion


def _float_text(name: str) -> pl.Expr:
    """Integral floats print as integers so a pandas-style ``123.0`` user id reads ``123``."""
    col = pl.col(name)
    integral = col.is_finite() & (col == col.floor()) & (col.abs() < MAX_EXACT_INTEGER)
    return pl.when(integral).then(col.cast(pl.Int64).cast(pl.String)).otherwise(col.cast(pl.String))


def _json_text(value: object) -> str | None:
    """Nested values (lists, structs) as JSON text, so they can be shown and rejected."""
    if isinstance(value, pl.Series):
        value = value.to_list()
    return None if value is None else json.dumps(value, default=str)


_EPOCH_TEXT = " since 1970-01-01T00:00:00Z"
_TIME_UNIT_PER_SECOND = {"ms": 10**3, "us": 10**6, "ns": 10**9}
_FIRST_SECOND = -62_135_596_800  # 0001-01-01T00:00:00Z in seconds from the epoch
_END_SECOND = 253_402_300_800  # 10000-01-01T00:00:00Z
_FIRST_DAY, _END_DAY = -719_162, 2_932_897  # the same, in days
_NS_PER_DAY = 86_400 * 10**9
_INT64 = (-(2**63), 2**63 - 1)


def _beyond_text(physical: pl.Expr, unit: str) -> pl.Expr:
    return pl.concat_str(physical.cast(pl.String), pl.lit(f" {unit}{_EPOCH_TEXT}"))


def _temporal_text(name: str, dtype: pl.DataType) -> pl.Expr:
    """Text of a datetime, date or time column; values the formatter cannot hold as text
    (Polars panics on them) are never handed to it and read as a count from the epoch."""
    col = pl.col(name)
    physical = col.to_physical()
    if isinstance(dtype, pl.Datetime):
        per = _TIME_UNIT_PER_SECOND[dtype.time_unit]
        low, high = max(_FIRST_SECOND * per, _INT64[0]), min(_END_SECOND * per - 1, _INT64[1])
        inside = pl.when(physical.is_between(low, high)).then(col)
        if dtype.time_zone:  # the instant in UTC: a local 10000-01-01 can be 9999-12-31 in UTC
            text = inside.dt.convert_time_zone("UTC").dt.to_string("%Y-%m-%dT%H:%M:%S%.f%:z")
        else:
            text = inside.dt.to_string("%Y-%m-%dT%H:%M:%S%.f")
        return pl.coalesce(text, _beyond_text(physical, dtype.time_unit))
    if isinstance(dtype, pl.Date):
        in_range = physical.is_between(_FIRST_DAY, _END_DAY - 1)
        return pl.coalesce(pl.when(in_range).then(col).cast(pl.String), _beyond_text(physical, "days"))
    # Time: nanoseconds since midnight
    in_range = physical.is_between(0, _NS_PER_DAY - 1)
    return pl.coalesce(pl.when(in_range).then(col).cast(pl.String),
                       pl.concat_str(physical.cast(pl.String), pl.lit(" ns since midnight")))


def _binary_text(series: pl.Series) -> pl.Series:
    """Bytes as text; bytes that are not UTF-8 are decoded with U+FFFD, as the CSV reader does."""
    try:
        return series.cast(pl.String)
    except pl.exceptions.ComputeError:
        values = [None if b is None else b.decode("utf-8", "replace") for b in series.to_list()]
        return pl.Series(series.name, values, dtype=pl.String)


def _printable_dtype(dtype: pl.DataType | DataTypeClass) -> pl.DataType | DataTypeClass:
    """A nested type whose values Python can hold: temporal leaves as their integers.

    (Converting a datetime of year 300,000 inside a list to Python panics in Polars.)
    """
    if isinstance(dtype, (pl.Datetime, pl.Duration, pl.Time)):
        return pl.Int64()
    if isinstance(dtype, pl.Date):
        return pl.Int32()
    if isinstance(dtype, (pl.Categorical, pl.Enum)):
        return pl.String()
    if isinstance(dtype, (pl.List, pl.Array)):
        return pl.List(_printable_dtype(dtype.inner))
    if isinstance(dtype, pl.Struct):
        return pl.Struct([pl.Field(f.name, _printable_dtype(f.dtype)) for f in dtype.fields])
    return dtype


def unreadable_dtype(dtype: pl.DataType) -> bool:
    """A column type with no text form an event field could be read from (a duration)."""
    return isinstance(dtype, (pl.Duration, pl.Object, pl.Unknown))


def unreadable_columns(schema: pl.Schema | dict[str, pl.DataType]) -> list[tuple[str, pl.DataType]]:
    """Event fields of ``schema`` whose column type cannot be read as text, in schema order."""
    return [(name, dtype) for name, dtype in schema.items() if name in RAW_FIELDS and unreadable_dtype(dtype)]


def text_expr(name: str, dtype: pl.DataType) -> pl.Expr:
    """The raw text of one input column, whatever type its reader produced; never fails.

    Also how the user directory reads a typed (Parquet) column, so an id is the same
    text in the directory as in the events (a pandas-style ``123.0`` is user ``123``)."""
    col = pl.col(name)
    if dtype == pl.String:
        return col
    if dtype == pl.Boolean:
        return pl.when(col).then(pl.lit("true")).when(~col).then(pl.lit("false"))
    if dtype.is_float():
        return _float_text(name)
    if isinstance(dtype, (pl.Datetime, pl.Date, pl.Time)):
        return _temporal_text(name, dtype)
    if isinstance(dtype, pl.Duration):  # ingest refuses such a column first (unreadable_columns)
        return pl.concat_str(col.to_physical().cast(pl.String), pl.lit(f" {dtype.time_unit} (a duration)"))
    if dtype.is_decimal() and (getattr(dtype, "scale", 0) or 0) > 0:
        # An integral decimal prints as an integer, as an integral float does: user_id 1.00
        # is user "1" whichever type carried it (a fraction is refused in ids by its type).
        return col.cast(pl.String).str.replace(r"\.0+$", "")
    if dtype.is_integer() or dtype.is_decimal() or dtype == pl.Null:
        return col.cast(pl.String)
    if isinstance(dtype, pl.Binary):
        return col.map_batches(_binary_text, return_dtype=pl.String)
    if isinstance(dtype, (pl.Categorical, pl.Enum)):
        return col.cast(pl.String, strict=False)
    if dtype.is_nested():
        return col.cast(_printable_dtype(dtype)).map_elements(_json_text, return_dtype=pl.String, skip_nulls=True)
    return col.map_elements(_json_text, return_dtype=pl.String, skip_nulls=True)


def _type_error(schema: pl.Schema) -> pl.Expr:
    """First value of the wrong type, as a reason (null when none).

    Readers of parsed values (JSON) name it in ``type_error``; typed id columns (Parquet,
    frames) are judged here by their type, since their text alone no longer tells.
    """
    found = [pl.col(TYPE_ERROR).cast(pl.String)] if TYPE_ERROR in schema else []
    for name in rules.ID_FIELDS:
        problem = rules.id_dtype_error(pl.col(name), schema[name]) if name in schema else None
        if problem is not None:
            found.append(pl.concat_str(pl.lit(f"{name}: "), problem))
    return pl.coalesce(found) if found else pl.lit(None, pl.String)


def _as_text(raw: pl.LazyFrame) -> pl.LazyFrame:
    """Known fields as text (absent ones as null), reader metadata, and a row number."""
    schema = raw.collect_schema()
    exprs = [
        (text_expr(name, schema[name]) if name in schema else pl.lit(None, pl.String)).alias(name)
        for name in RAW_FIELDS
    ]
    meta_types = {SOURCE_FILE: pl.String, SOURCE_ROW: pl.Int64, READ_ERROR: pl.String, NOT_UTF8: pl.String}
    exprs += [
        (pl.col(name).cast(dtype) if name in schema else pl.lit(None, dtype)).alias(name)
        for name, dtype in meta_types.items()
    ]
    exprs.append(_type_error(schema).alias(TYPE_ERROR))
    return raw.select(exprs).with_row_index(_ROW)


# ---------------------------------------------------------------- parsing


def _trimmed(name: str) -> pl.Expr:
    text = rules.strip_text(pl.col(name))
    return pl.when(text.str.len_chars() > 0).then(text).alias(_v(name))


def _number(field: str) -> pl.Expr:
    return pl.col(_v(field)).cast(pl.Float64, strict=False)


def _category(field: str, allowed: tuple[str, ...]) -> pl.Expr:
    return rules.category_expr(pl.col(_v(field)), allowed)


def _parse(lf: pl.LazyFrame, events: EventSettings) -> pl.LazyFrame:
    """Trimmed text plus the typed value of every field, side by side with the raw text."""
    lf = lf.with_columns(_trimmed(name) for name in RAW_FIELDS).with_columns(
        rules.timestamp_parts(pl.col(_v("timestamp"))).alias("_ts_parts")
    ).with_columns(
        rules.local_timestamp(pl.col("_ts_parts")).alias("_ts_local"),
        pl.col("_ts_parts").struct.field("y").is_not_null().alias("_ts_syntax"),
    )
    clock = rules.clock_fields(pl.col("_ts"))  # the stored hour and weekday, as scoring checks them
    return lf.with_columns(
        _ts=pl.when(rules.in_utc_range(pl.col("_ts_local"))).then(pl.col("_ts_local"))
        .dt.replace_time_zone("UTC").cast(EVENT_SCHEMA["timestamp"]),
        _event_type=_category("event_type", events.event_types),
        _device_type=_category("device_type", events.device_types),
        _duration=_number("session_duration_sec"),
        _count=_number("events_in_session"),
        _hour=_number("hour_of_day"),
        _dow=_number("day_of_week"),
    ).with_columns(
        pl.col("_ts").dt.date().alias(_DATE),
        clock["hour_of_day"].alias("_ts_hour"),
        clock["day_of_week"].alias("_ts_dow"),
    ).drop("_ts_parts")


# ---------------------------------------------------------------- rules


def _shown(field: str) -> pl.Expr:
    """The value as given (trimmed, cut to a readable length) for messages."""
    value = pl.col(_v(field))
    return (
        pl.when(value.str.len_chars() > SHOWN_CHARS)
        .then(pl.concat_str(value.str.slice(0, SHOWN_CHARS), pl.lit("...")))
        .otherwise(value)
    )


def _quoted(field: str) -> pl.Expr:
    return pl.concat_str(pl.lit("'"), _shown(field), pl.lit("'"))


def _quoted_clean(field: str) -> pl.Expr:
    """The value quoted, each refused id character shown as '?' (a reason is one printable line)."""
    return pl.concat_str(pl.lit("'"), _shown(field).str.replace_all(rules.BAD_CHARS_PATTERN, "?"), pl.lit("'"))


def _msg(*parts: str | pl.Expr) -> pl.Expr:
    return pl.concat_str([pl.lit(p) if isinstance(p, str) else p for p in parts])


def _is_integer(col: str) -> pl.Expr:
    value = pl.col(col)
    return value.is_finite() & (value == value.floor()) & (value.abs() < MAX_EXACT_INTEGER)


def _string_checks(field: str, max_len: int) -> list[_Check]:
    value = pl.col(_v(field))
    return [
        _Check(KIND_OVERSIZED, value.str.len_chars() > max_len,
               pl.lit(f"{field}: {rules.msg_id_too_long(max_len)}")),
        _Check(KIND_CHARACTERS, rules.has_bad_chars(value),
               _msg(f"{field}: ", _quoted_clean(field), f" {rules.MSG_ID_CHARACTERS} (the first as UTF-8: ",
                    value.str.extract(f"({rules.BAD_CHARS_PATTERN})", 1).str.encode("hex"), ")")),
    ]


def _not_utf8_check() -> _Check:
    """A field whose U+FFFD stands for bytes of the file that were not UTF-8 (the reader's
    ``not_utf8`` note): a Latin-1 / Windows-1252 export. Such a row failed anyway (as an id's
    invalid characters, an unknown category, not a number ...), with a reason naming
    neither the place nor the cure; now it names the field, the line and byte of the file
    and says to save the file as UTF-8 (``uba.io.not_utf8_problem``, as users import and
    feedback say it). A U+FFFD written in a UTF-8 file has no note and keeps its reason."""
    replaced = {f: pl.col(_v(f)).str.contains(REPLACEMENT_CHAR, literal=True) for f in RAW_FIELDS}
    message = pl.coalesce([
        pl.when(found).then(_msg(f"{f}: ", _quoted_clean(f), " holds bytes that are not UTF-8 (shown as ?): ",
                                 pl.col(NOT_UTF8)))
        for f, found in replaced.items()
    ])
    return _Check(KIND_CHARACTERS, pl.col(NOT_UTF8).is_not_null() & pl.any_horizontal(replaced.values()), message)


def _category_check(field: str, allowed: tuple[str, ...]) -> _Check:
    return _Check(KIND_CATEGORY, pl.col(f"_{field}").is_null(),
                  _msg(f"{field}: ", _quoted(field), f" {rules.msg_category(allowed)}"))


def _number_checks(field: str, col: str, integer: bool) -> list[_Check]:
    """Type then finiteness checks shared by the numeric fields."""
    what = "an integer" if integer else "a number"
    value = pl.col(col)
    checks = [_Check(KIND_TYPE, value.is_null(), _msg(f"{field}: ", _quoted(field), f" is not {what}"))]
    if integer:
        checks.append(_Check(KIND_TYPE, ~_is_integer(col), _msg(f"{field}: ", _quoted(field), " is not an integer")))
    else:
        checks.append(_Check(KIND_TYPE, ~value.is_finite(),
                             _msg(f"{field}: ", _quoted(field), " is not a finite number")))
    return checks


def _optional_int_checks(field: str, col: str, high: int, derived: str, label: str, note: str) -> list[_Check]:
    """hour_of_day / day_of_week: only checked when given; must agree with the timestamp."""
    given = pl.col(_v(field)).is_not_null()
    value = pl.col(col)
    return [
        _Check(KIND_TYPE, given & (value.is_null() | ~_is_integer(col)),
               _msg(f"{field}: ", _quoted(field), " is not an integer")),
        _Check(KIND_RANGE, given & ((value < 0) | (value > high)),
               _msg(f"{field}: ", _shown(field), f" out of range 0-{high}{note}")),
        _Check(KIND_DISAGREE, given & (value != pl.col(derived)),
               _msg(f"{field}: ", _shown(field), f" disagrees with timestamp {label} ",
                    pl.col(derived).cast(pl.String), f" (UTC{note.replace(' (', ', ').rstrip(')')})")),
    ]


def _row_checks(events: EventSettings) -> list[_Check]:
    """Every per-row rule in the order the first failure is reported."""
    max_len = events.max_string_length
    checks = [
        _Check(KIND_UNREADABLE, pl.col(READ_ERROR).is_not_null(), pl.col(READ_ERROR)),
        _Check(KIND_MISSING, pl.all_horizontal(pl.col(_v(f)).is_null() for f in RAW_FIELDS),
               pl.lit("empty row (no values)")),
    ]
    checks += [_Check(KIND_MISSING, pl.col(_v(f)).is_null(), pl.lit(f"missing field: {f}")) for f in REQUIRED_FIELDS]
    checks.append(_Check(KIND_TYPE, pl.col(TYPE_ERROR).is_not_null(), pl.col(TYPE_ERROR)))
    checks.append(_not_utf8_check())
    for field in ID_FIELDS:
        checks += _string_checks(field, max_len)
    checks += [
        _Check(KIND_TIMESTAMP, ~pl.col("_ts_syntax"),
               _msg("timestamp: ", _quoted("timestamp"), f" {rules.MSG_TS_SYNTAX}")),
        _Check(KIND_TIMESTAMP, pl.col("_ts_local").is_null(),
               _msg("timestamp: ", _quoted("timestamp"), f" {rules.MSG_TS_INVALID}")),
        _Check(KIND_TIMESTAMP, pl.col("_ts").is_null(),
               _msg("timestamp: ", _quoted("timestamp"), f" {rules.MSG_TS_RANGE}")),
        _category_check("event_type", events.event_types),
        *_number_checks("session_duration_sec", "_duration", integer=False),
        _Check(KIND_RANGE, pl.col("_duration") < 0,
               _msg("session_duration_sec: ", _shown("session_duration_sec"), " is negative")),
        _Check(KIND_RANGE, pl.col("_duration") > events.max_session_duration_sec,
               _msg("session_duration_sec: ", _shown("session_duration_sec"),
                    f" exceeds maximum {events.max_session_duration_sec:g}")),
        *_number_checks("events_in_session", "_count", integer=True),
        _Check(KIND_RANGE, pl.col("_count") < 1,
               _msg("events_in_session: ", _shown("events_in_session"), " is less than 1")),
        _Check(KIND_RANGE, pl.col("_count") > events.max_events_in_session,
               _msg("events_in_session: ", _shown("events_in_session"),
                    f" exceeds maximum {events.max_events_in_session}")),
        _category_check("device_type", events.device_types),
        *_optional_int_checks("hour_of_day", "_hour", 23, "_ts_hour", "hour", ""),
        *_optional_int_checks("day_of_week", "_dow", 6, "_ts_dow", "weekday", " (0=Monday)"),
        *_string_checks("session_id", max_len),
    ]
    return checks


def _duplicate_checks() -> list[_Check]:
    """Rules that need the other rows, applied after every row rule has passed.

    Their conditions are computed by ``_duplicate_index``; only kind and message live here.
    """
    first_seen = (
        pl.when(pl.col(_FIRST_ROW).is_not_null())
        .then(_msg(" (first seen at row ", pl.col(_FIRST_ROW).cast(pl.String), ")"))
        .otherwise(pl.lit(""))
    )
    return [
        _Check(KIND_DUPLICATE, pl.col(_STORED).fill_null(False),
               _msg("event_id: ", _quoted("event_id"), " already stored for ", pl.col(_DATE).cast(pl.String))),
        _Check(KIND_DUPLICATE, pl.col("_later_copy"),
               _msg("event_id: ", _quoted("event_id"), " duplicated in this batch", first_seen)),
    ]


def _first_failing(checks: list[_Check], offset: int = 0) -> pl.Expr:
    """Index of the first failed check (null when the row passes every one)."""
    chain: Then | ChainedThen = pl.when(checks[0].failed).then(pl.lit(offset, pl.Int32))
    for index, check in enumerate(checks[1:], start=offset + 1):
        chain = chain.when(check.failed).then(pl.lit(index, pl.Int32))
    return chain.otherwise(pl.lit(None, pl.Int32))


def _pick(checks: list[_Check], attribute: Callable[[_Check], pl.Expr]) -> pl.Expr:
    chain: Then | ChainedThen = pl.when(pl.col(_CHECK) == 0).then(attribute(checks[0]))
    for index, check in enumerate(checks[1:], start=1):
        chain = chain.when(pl.col(_CHECK) == index).then(attribute(check))
    return chain.otherwise(pl.lit(None, pl.String))


# ---------------------------------------------------------------- splitting


def _stored_hits(candidates: pl.LazyFrame, existing_ids: pl.LazyFrame) -> pl.LazyFrame:
    """Stored (event_id, date) pairs that this input repeats.

    The semi join keeps only colliding keys, so memory follows the input batch, not the
    size of what is already stored.
    """
    keys = candidates.select(pl.col(_v("event_id")).alias("event_id"), pl.col(_DATE).alias(PARTITION_COLUMN))
    stored = existing_ids.select(
        pl.col("event_id").cast(pl.String), pl.col(PARTITION_COLUMN).cast(pl.Date)
    )
    return (
        stored.join(keys, on=["event_id", PARTITION_COLUMN], how="semi")
        .unique()
        .select(
            pl.col("event_id").alias(_v("event_id")),
            pl.col(PARTITION_COLUMN).alias(_DATE),
            pl.lit(True).alias(_STORED),
        )
    )


def _with_duplicate_marks(candidates: pl.LazyFrame, existing_ids: pl.LazyFrame | None) -> pl.LazyFrame:
    """Flag rows whose id is already stored for their date, or repeats an earlier row of that date.

    Ids are compared trimmed, and per UTC date in both rules, so the outcome does not
    depend on how the input was cut into batches. The in-batch rule only looks at rows
    that are not already stored, so a stored id repeated twice reads "already stored"
    both times.
    """
    if existing_ids is None:
        candidates = candidates.with_columns(pl.lit(False).alias(_STORED))
    else:
        candidates = candidates.join(
            _stored_hits(candidates, existing_ids), on=[_v("event_id"), _DATE], how="left",
            maintain_order="left",
        ).with_columns(pl.col(_STORED).fill_null(False))
    # Hash-based marks, not window functions: most batches have no duplicates at all.
    copies = pl.struct(_v("event_id"), _DATE, _STORED)
    return candidates.with_columns(
        (~pl.col(_STORED) & ~copies.is_first_distinct()).alias("_later_copy"),
        (~pl.col(_STORED) & copies.is_duplicated() & copies.is_first_distinct()).alias("_first_copy"),
    )


def _first_rows(candidates: pl.LazyFrame) -> pl.LazyFrame:
    """Row of the kept occurrence of each repeated id, for the in-batch duplicate message."""
    return candidates.filter(pl.col("_first_copy")).select(
        _v("event_id"), _DATE, pl.col(SOURCE_ROW).alias(_FIRST_ROW)
    )


def _duplicate_index(offset: int) -> pl.Expr:
    return (
        pl.when(pl.col(_STORED)).then(pl.lit(offset, pl.Int32))
        .when(pl.col("_later_copy")).then(pl.lit(offset + 1, pl.Int32))
        .otherwise(pl.lit(None, pl.Int32))
    )


def _valid_events(rows: pl.LazyFrame) -> pl.LazyFrame:
    """Typed rows in the stored schema; hour/day always come from the UTC timestamp."""
    duration = pl.col("_duration")
    return rows.select(
        pl.col(_v("event_id")).alias("event_id"),
        pl.col(_v("user_id")).alias("user_id"),
        pl.col("_ts").alias("timestamp"),
        pl.col("_event_type").alias("event_type"),
        pl.when(duration == 0).then(0.0).otherwise(duration).alias("session_duration_sec"),
        pl.col("_count").cast(pl.Int64).alias("events_in_session"),
        pl.col("_device_type").alias("device_type"),
        pl.col("_ts_hour").cast(pl.Int8).alias("hour_of_day"),
        pl.col("_ts_dow").cast(pl.Int8).alias("day_of_week"),
        pl.col(_v("session_id")).alias("session_id"),
    ).cast(pl.Schema(EVENT_SCHEMA))


def validate_events(
    raw: pl.LazyFrame,
    events: EventSettings,
    existing_ids: pl.LazyFrame | None = None,
) -> tuple[pl.LazyFrame, pl.LazyFrame]:
    """Split raw rows into ``(valid, rejected)``; every input row lands in exactly one.

    ``raw`` holds the fields of DESIGN.md with any types (missing columns count as
    missing fields, unknown columns are ignored) and optionally ``source_file``,
    ``source_row`` and ``read_error`` (a reader's message for a record it could not parse).
    ``existing_ids`` has ``event_id`` and ``event_date`` of events already stored.

    ``valid`` is in ``EVENT_SCHEMA``. ``rejected`` has every raw field as the text that
    was read, ``reason`` (first failing check, naming field and value), ``reason_kind``
    (one of ``REASON_KINDS``), ``source_file``, ``source_row`` and ``event_date`` (UTC
    date of the timestamp, null when it is unusable), in input order.
    """
    row_checks = _row_checks(events)
    checks = row_checks + _duplicate_checks()
    parsed = _parse(_as_text(raw), events).with_columns(_first_failing(row_checks).alias(_CHECK))

    candidates = _with_duplicate_marks(parsed.filter(pl.col(_CHECK).is_null()), existing_ids)
    candidates = candidates.with_columns(_duplicate_index(len(row_checks)).alias(_CHECK))

    kept = [*RAW_FIELDS, SOURCE_FILE, SOURCE_ROW, READ_ERROR, TYPE_ERROR, NOT_UTF8, _ROW, _CHECK, _DATE, _FIRST_ROW,
            "_ts_hour", "_ts_dow",
            *(_v(f) for f in RAW_FIELDS)]
    row_rejects = parsed.filter(pl.col(_CHECK).is_not_null()).with_columns(
        pl.lit(None, pl.Int64).alias(_FIRST_ROW)
    )
    dup_rejects = candidates.filter(pl.col(_CHECK).is_not_null()).join(
        _first_rows(candidates), on=[_v("event_id"), _DATE], how="left", maintain_order="left"
    )
    rejected = (
        pl.concat([row_rejects.select(kept), dup_rejects.select(kept)])
        .with_columns(
            _pick(checks, lambda c: c.message).alias(REASON),
            _pick(checks, lambda c: pl.lit(c.kind)).alias(REASON_KIND),
        )
        .sort(_ROW)
        .select(*RAW_FIELDS, REASON, REASON_KIND, SOURCE_FILE, SOURCE_ROW,
                pl.col(_DATE).alias(PARTITION_COLUMN))
    )
    valid = _valid_events(candidates.filter(pl.col(_CHECK).is_null()))
    return valid, rejected


def event_dates(raw: pl.LazyFrame) -> pl.LazyFrame:
    """UTC dates the rows of ``raw`` can fall on (column ``event_date``), a cheap superset.

    Read from the first ten characters of each timestamp plus the day either side (a UTC
    offset moves an event by less than a day), without parsing the full timestamp. It
    lets the caller load only the stored ids of those dates before validating. Only
    dates in years 0001-9999 are listed: no event is stored outside them, and the
    caller turns the dates into Python dates.
    """
    text = _as_text(raw).select(rules.strip_text(pl.col("timestamp")).str.slice(0, 10).alias("t"))
    day = pl.col("t").str.to_date("%Y-%m-%d", strict=False)
    days = text.select(day.alias("d")).drop_nulls().unique()
    shifted = [days.select((pl.col("d") + pl.duration(days=k)).alias(PARTITION_COLUMN)) for k in (-1, 0, 1)]
    representable = pl.col(PARTITION_COLUMN).is_between(rules.MIN_UTC.date(), rules.MAX_UTC.date())
    return pl.concat(shifted).unique().filter(representable).sort(PARTITION_COLUMN)
