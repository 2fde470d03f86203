"""Bring raw event files into the store: read in bounded batches, validate, write partitions.

Every value is read as text (nothing is inferred), so a bad value becomes a quarantined
row with a reason instead of a crash. Each batch is validated against the ids already
stored for the dates it touches (including parts written by earlier batches of the same
run) and written at once, so memory follows ``settings.ingest.batch_rows``, not the file.

Input is untrusted. Where a record ends is decided once, by one scanner per format
(``_record_ends`` for CSV, line breaks for JSON Lines, the decoder for JSON arrays), and
every later parser only ever sees one such record, so text inside a quoted field can
never become a record of its own. The ``ingest.max_*`` settings bound field, record,
column and decompressed sizes: a field over its limit quarantines its row, the others
stop the run with an error naming the file and the limit. A JSON array file is one
array: content after its closing bracket stops the run with the byte offset. JSON keys
outside the event schema are named in the summary but never become columns, so memory
follows the input, not rows x distinct keys. Parquet columns of any type are read
(values past what text can hold are quarantined); a duration event field stops the run.

``ingest_frame`` is the one event writer: ``uba-batch generate`` goes through it too, so
every row under ``events/`` passed the same checks.
"""

from __future__ import annotations

import codecs
import difflib
import errno
import functools
import io
import json
import math
import re
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from itertools import chain, islice
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from uba import event_rules as rules
from uba import io as storage
from uba.errors import UserError, first_line
from uba.ingest.validate import (
    KIND_DUPLICATE,
    META_FIELDS,
    NOT_UTF8,
    READ_ERROR,
    REASON_KIND,
    SOURCE_FILE,
    SOURCE_ROW,
    TYPE_ERROR,
    event_dates,
    unreadable_columns,
    validate_events,
)
from uba.logs import get_logger, printable_line
from uba.schema import (
    OPTIONAL_FIELDS,
    PARTITION_COLUMN,
    QUARANTINE_SCHEMA,
    RAW_FIELDS,
    REQUIRED_FIELDS,
    UNKNOWN_PARTITION,
    JsonValue,
)
from uba.settings import IngestSettings, Settings

FORMATS: tuple[str, ...] = ("csv", "json", "jsonl", "parquet")
EXTENSIONS: dict[str, str] = {
    ".csv": "csv",
    ".json": "json",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".parquet": "parquet",
    ".pq": "parquet",
}
GZIP_FORMATS = frozenset({"csv", "json", "jsonl"})
EXCERPT_CHARS = 80
KEPT_CHARS = 200  # an oversized field is kept in the quarantine cut to this many characters
JSON_READ_CHARS = 1 << 20
CSV_READ_BYTES = 1 << 20
BLOCK_BYTES = 64 << 20  # a batch also ends at this many bytes of records, whatever batch_rows says
PARQUET_BLOCK_BYTES = 32 << 20  # a Parquet batch ends at this many decoded text bytes (~250,000 plain events)
NESTED_TOO_DEEP = "is nested too deeply to read (JSON deeper than about 1,000 levels)"

_QUOTE, _COMMA, _LF, _CR = 0x22, 0x2C, 0x0A, 0x0D
_QUOTED_FIELD = re.compile(r'"((?:[^"]++|"")*+)"')
_JSON_TOKEN = re.compile(r'"(?:[^"\\]++|\\.)*+"|[\[\]{}]|"')
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")  # how a lone surrogate gets into parsed JSON
_SURROGATE = re.compile("[\ud800-\udfff]")
_JSON_SCALAR = re.compile(r'[^,\]\s]*')
_JSON_WHITESPACE = frozenset(" \t\n\r")
_BOM = b"\xef\xbb\xbf"
_BOM_TEXT = "\ufeff"
MAX_IGNORED_NAMES = 100  # names of columns or keys outside the event schema kept per file

_log = get_logger("ingest")
_IgnoredNote = Callable[[list[str], bool], None]  # names outside the event schema, and whether there were more


# ---------------------------------------------------------------- formats


def detect_format(path: Path, requested: str = "auto") -> str:
    """The reader for a file: ``requested`` unless 'auto', else from its extension (``.gz`` looked through)."""
    path = Path(path)
    suffixes = [s.lower() for s in path.suffixes]
    gzipped = bool(suffixes) and suffixes[-1] == ".gz"
    if requested != "auto":
        fmt = requested
    else:
        ext = suffixes[-2] if gzipped and len(suffixes) > 1 else (suffixes[-1] if suffixes else "")
        if ext not in EXTENSIONS:
            raise UserError(
                f"cannot tell the format of {path} from its extension; pass --format "
                f"({', '.join(FORMATS)})"
            )
        fmt = EXTENSIONS[ext]
    if fmt not in FORMATS:
        raise UserError(f"unknown input format {fmt!r}; expected one of {', '.join(FORMATS)}")
    if gzipped and fmt not in GZIP_FORMATS:
        raise UserError(f"{path}: gzip is supported for csv, json and jsonl, not {fmt}")
    return fmt


def _excerpt(text: str) -> str:
    text = text.strip()
    return text if len(text) <= EXCERPT_CHARS else text[:EXCERPT_CHARS] + "..."


class _CappedStream(io.RawIOBase):
    """A decompressing reader that stops at ``limit`` bytes: a small .gz can inflate without end."""

    def __init__(self, inner: storage.InputStream, limit: int, path: Path) -> None:
        super().__init__()
        self._inner = inner
        self._limit = limit
        self._path = path
        self._total = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        count = self._inner.readinto(buffer)
        self._total += count
        if self._total > self._limit:
            raise UserError(
                f"{self._path}: decompresses to more than ingest.max_decompressed_bytes "
                f"({self._limit:,} bytes); raise the limit if the file is genuine"
            )
        return count

    def close(self) -> None:
        self._inner.close()
        super().close()


def _open_input(path: Path, limits: IngestSettings) -> storage.InputStream:
    """Binary reader of an input; a gzip input is capped at ``max_decompressed_bytes``."""
    handle = storage.open_input(path)
    if Path(path).suffix.lower() != ".gz":
        return handle
    return io.BufferedReader(_CappedStream(handle, limits.max_decompressed_bytes, Path(path)),
                             buffer_size=CSV_READ_BYTES)


def _record_too_long(path: Path, what: str, limit: int) -> UserError:
    return UserError(
        f"{path}: {what} is longer than ingest.max_record_bytes ({limit:,} bytes); "
        "a quote that never closes or line ends other than \\n and \\r\\n also make one long record"
    )


# ---------------------------------------------------------------- CSV records


def _parity_spans_are_exact(arr: np.ndarray, opens: np.ndarray, closes: np.ndarray) -> bool:
    """Whether pairing quotes in order gives the same quoted fields as reading field by field.

    True when every opening quote starts a field (or follows the quote it escapes) and
    every closing quote ends one; any other quote is taken literally by the field rule,
    which then needs the slow scan.
    """
    size = arr.size
    before = arr[np.maximum(opens - 1, 0)]
    opens_ok = (opens == 0) | np.isin(before, (_COMMA, _LF, _QUOTE))
    after_at = closes + 1
    known = after_at < size
    after = arr[np.minimum(after_at, size - 1)]
    after2 = arr[np.minimum(after_at + 1, size - 1)]
    crlf = (after == _CR) & ((after_at + 1 >= size) | (after2 == _LF))
    closes_ok = ~known | np.isin(after, (_COMMA, _LF, _QUOTE)) | crlf
    return bool(opens_ok.all() and closes_ok.all())


def _quoted_spans_slowly(data: bytes, quotes: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Quoted fields field by field: a quote opens one only where a field starts."""
    opens: list[int] = []
    closes: list[int] = []
    inside = False
    index, count = 0, len(quotes)
    while index < count:
        at = quotes[index]
        if inside:
            if index + 1 < count and quotes[index + 1] == at + 1:  # "" inside a quoted field
                index += 2
                continue
            closes.append(at)
            inside = False
        elif at == 0 or data[at - 1] in (_COMMA, _LF):
            opens.append(at)
            inside = True
        index += 1
    return np.array(opens, dtype=np.int64), np.array(closes, dtype=np.int64)


def _outside_spans(newlines: np.ndarray, opens: np.ndarray, closes: np.ndarray) -> np.ndarray:
    """The line breaks that are not inside a quoted field (a last unclosed one runs to the end)."""
    if opens.size == 0:
        return newlines
    if closes.size < opens.size:
        closes = np.append(closes, np.iinfo(np.int64).max)
    span = np.searchsorted(opens, newlines, side="right") - 1
    inside = (span >= 0) & (closes[np.maximum(span, 0)] > newlines)
    return newlines[~inside]


def _record_ends(data: bytes, eof: bool) -> tuple[np.ndarray, bool]:
    """Offsets just past each whole record of ``data`` (which starts at a record start).

    The one definition of a CSV record (RFC 4180, read leniently): a line break ends a
    record unless it is inside a quoted field; a quote opens a quoted field only where a
    field starts, ``""`` inside one is a quote, and a quote anywhere else is a character.
    At the end of the input the rest is a last record. The second value says whether
    the quoting was regular (every quote where RFC 4180 puts it): only then may the
    columnar parser read the records, since any parser agrees on regular CSV.
    """
    arr = np.frombuffer(data, dtype=np.uint8)
    newlines = np.flatnonzero(arr == _LF)
    quotes = np.flatnonzero(arr == _QUOTE)
    returns = np.flatnonzero(arr == _CR)  # a \r not before \n: parsers differ on its field
    regular = not returns.size or bool((arr[np.minimum(returns + 1, arr.size - 1)] == _LF).all()
                                       and returns[-1] + 1 < arr.size)
    if quotes.size:
        opens, closes = quotes[0::2], quotes[1::2]
        exact = _parity_spans_are_exact(arr, opens, closes)
        regular = regular and exact
        if not exact:
            opens, closes = _quoted_spans_slowly(data, quotes.tolist())
        newlines = _outside_spans(newlines, opens, closes)
    ends = newlines + 1
    if eof and data and (ends.size == 0 or int(ends[-1]) != len(data)):
        ends = np.append(ends, len(data))
    return ends, regular


def _csv_runs(handle: storage.InputStream, path: Path, limit: int) -> Iterator[tuple[bytes, np.ndarray, bool]]:
    """Whole records as read: ``(bytes, end of each record, regular)``, about one read block each."""
    tail = b""
    records = 0
    while True:
        chunk = handle.read(CSV_READ_BYTES)
        eof = not chunk
        data = tail + chunk if tail else chunk
        if not data:
            return
        ends, regular = _record_ends(data, eof)
        if ends.size:
            sizes = np.diff(ends, prepend=0)
            if int(sizes.max()) > limit:
                row = records + int(np.argmax(sizes > limit))
                raise _record_too_long(path, f"data row {row:,}" if row else "the header", limit)
            cut = int(ends[-1])
            yield data[:cut], ends, regular
            records += int(ends.size)
            tail = data[cut:]
        else:
            tail = data
        if len(tail) > limit:
            raise _record_too_long(path, f"data row {records:,}" if records else "the header", limit)
        if eof:
            return


def _csv_blocks(runs: Iterable[tuple[bytes, np.ndarray, bool]], batch_rows: int,
                max_bytes: int) -> Iterator[tuple[bytes, np.ndarray, bool]]:
    """Runs regrouped into batches of at most ``batch_rows`` records and about ``max_bytes``."""
    parts: list[bytes] = []
    offsets: list[np.ndarray] = []
    size = count = 0
    regular = True
    for data, ends, run_regular in runs:
        start = index = 0
        while index < ends.size:
            by_bytes = int(np.searchsorted(ends, start + max_bytes - size, side="right"))
            stop = min(int(ends.size), index + batch_rows - count, by_bytes)
            if stop <= index and count:
                yield b"".join(parts), np.concatenate(offsets), regular
                parts, offsets, size, count, regular = [], [], 0, 0, True
                continue
            stop = max(stop, index + 1)
            end = int(ends[stop - 1])
            parts.append(data[start:end])
            offsets.append(ends[index:stop] - start + size)
            size, count, regular = size + end - start, count + stop - index, regular and run_regular
            start, index = end, stop
            if count >= batch_rows or size >= max_bytes:
                yield b"".join(parts), np.concatenate(offsets), regular
                parts, offsets, size, count, regular = [], [], 0, 0, True
    if count:
        yield b"".join(parts), np.concatenate(offsets), regular


class _CsvError(ValueError):
    """One record that is not CSV; it is quarantined, the records around it are not touched."""


def _without_line_end(record: bytes) -> bytes:
    if record.endswith(b"\r\n"):
        return record[:-2]
    return record[:-1] if record.endswith(b"\n") else record


def _parse_record(text: str) -> list[str | None]:
    """Fields of one record (its line end removed); an empty unquoted field is null."""
    if '"' not in text:
        return [value or None for value in text.split(",")]
    fields: list[str | None] = []
    pos, size = 0, len(text)
    while True:
        value: str | None
        if text.startswith('"', pos):
            match = _QUOTED_FIELD.match(text, pos)
            if match is None:
                raise _CsvError(f"field {len(fields) + 1} opens a quote that is never closed")
            value, pos = match.group(1).replace('""', '"'), match.end()
            if pos < size and text[pos] != ",":
                raise _CsvError(f"field {len(fields) + 1} has text after its closing quote")
        else:
            comma = text.find(",", pos)
            end = size if comma < 0 else comma
            value, pos = text[pos:end] or None, end
        fields.append(value)
        if pos >= size:
            return fields
        pos += 1


def _csv_header(record: bytes, path: Path, limits: IngestSettings) -> list[str]:
    """Column names, refused (one line naming the file) when they would make the run unsafe."""
    text = _without_line_end(record).decode("utf-8-sig", errors="replace")
    try:
        fields = _parse_record(text)
    except _CsvError as exc:
        raise UserError(f"{path}: the header is not CSV: {exc}") from exc
    if len(fields) > limits.max_columns:
        raise UserError(f"{path}: the header has {len(fields):,} columns, over ingest.max_columns "
                        f"({limits.max_columns:,})")
    names = storage.name_unnamed_columns([(name or "").strip() for name in fields])
    if any("\n" in name or "\r" in name for name in names):
        raise UserError(f"{path}: a header column name holds a line break (are the line ends \\r only?)")
    if any(len(name.encode()) > limits.max_field_bytes for name in names):
        raise UserError(f"{path}: a header column name is longer than ingest.max_field_bytes "
                        f"({limits.max_field_bytes:,} bytes)")
    repeated = sorted(name for name, count in Counter(names).items() if count > 1)
    if repeated:
        raise UserError(f"{path}: header repeats column {_excerpt(repeated[0])!r}")
    return names


def check_required_columns(path: Path | str, names: Sequence[str]) -> None:
    """Refuse a file whose header or schema lacks a required event field, naming what it
    has, what is expected and the closest name (``userid`` for ``user_id``). Every row of
    such a file would only be quarantined for the same missing field, and a run reporting
    ``ok`` while storing nothing hid a wrong export from whoever scheduled it."""
    present = set(names)
    missing = [field for field in REQUIRED_FIELDS if field not in present]
    if not missing:
        return
    others = {name.strip().lower().replace("-", "_").replace(" ", "_"): name
              for name in names if name not in _KNOWN_KEYS}
    hints = []
    for wanted in missing:
        close = difflib.get_close_matches(wanted, list(others), n=1, cutoff=0.75)
        if close:
            hints.append(f"{_excerpt(others[close[0]])!r} for {wanted}?")
    hint = f" (did you mean {', '.join(hints)})" if hints else ""
    found = ", ".join(_excerpt(name) for name in list(names)[:30]) or "none"
    raise UserError(f"{path}: missing required column{'s' if len(missing) > 1 else ''} {', '.join(missing)}{hint}; "
                    f"found: {found}; expected: {', '.join(REQUIRED_FIELDS)}, and optionally "
                    f"{', '.join(OPTIONAL_FIELDS)}")


def _csv_rows_slowly(body: bytes, ends: np.ndarray, names: list[str]) -> pl.DataFrame:
    """Record-by-record parse of a batch, flagging each record that is not CSV."""
    width = len(names)
    rows: list[list[str | None]] = []
    errors: list[str | None] = []
    start = 0
    for end in ends.tolist():
        text = _without_line_end(body[start:end]).decode("utf-8", errors="replace")
        start = end
        try:
            record = _parse_record(text)
        except _CsvError as exc:
            rows.append([None] * width)
            errors.append(f"row could not be parsed as CSV: {exc}")
            continue
        error = None
        if len(record) > width:
            extra = ",".join(value or "" for value in record[width:])
            error = f"row has {len(record)} fields, header has {width} (extra: {_excerpt(extra)!r})"
        values = record[:width]
        rows.append(values + [None] * (width - len(values)))
        errors.append(error)
    columns: dict[str, list[Any]] = {name: [row[i] for row in rows] for i, name in enumerate(names)}
    columns[READ_ERROR] = errors
    return pl.DataFrame(columns, schema={**{n: pl.String for n in names}, READ_ERROR: pl.String})


def _csv_fast(body: bytes, records: int, names: list[str]) -> pl.DataFrame | None:
    """Columnar parse of regular records; None when it does not give exactly one row per record.

    Strict UTF-8 first (no copy); a block with invalid bytes is decoded with replacement
    characters, which validation then rejects in ids and categories.
    """
    schema = {f"column_{i}": pl.String for i in range(len(names))}
    for encoding in ("utf8", "utf8-lossy"):
        try:
            frame = pl.read_csv(body, has_header=False, schema=schema, encoding=encoding, raise_if_empty=False)
        except (pl.exceptions.PolarsError, pl.exceptions.PanicException) as exc:
            if "utf" in str(exc).lower():  # only bad bytes are worth a second try
                continue
            return None
        if frame.height != records or frame.width != len(names):
            return None
        frame.columns = names
        return frame.with_columns(pl.lit(None, pl.String).alias(READ_ERROR))
    return None


def _not_utf8_notes(body: bytes, ends: np.ndarray, line: int, offset: int) -> list[str | None] | None:
    """Per record of ``body`` (ending at ``ends``), where its first byte that is not UTF-8
    is, in ``uba.io.not_utf8_problem``'s words (None for a record that is UTF-8); None when
    every record is. ``line`` and ``offset``: the file line and byte offset ``body`` starts at.

    The readers decode such bytes as U+FFFD, and validation quarantines the field with this
    note (a Latin-1 / Windows-1252 export: save it as UTF-8). Decoded in windows of
    ``CSV_READ_BYTES`` from each bad record's end, so a file of bad rows costs one short
    decode per row, not one of the rest of the block."""
    if body.isascii():
        return None
    view, size = memoryview(body), len(body)
    notes: list[str | None] | None = None
    pos = counted = 0
    while pos < size:
        stop = min(size, pos + CSV_READ_BYTES)
        try:  # not final inside the block: a character cut at the window's end is read by the next one
            pos += codecs.utf_8_decode(view[pos:stop], "strict", stop == size)[1]
            continue
        except UnicodeDecodeError as exc:
            bad = pos + exc.start
        line += body.count(b"\n", counted, bad)
        counted = bad
        record = int(np.searchsorted(ends, bad, side="right"))
        notes = notes or [None] * int(ends.size)
        notes[record] = storage.not_utf8_problem(body[bad], line, offset + bad)
        pos = int(ends[record])
    return notes


def _csv_batches(path: Path, batch_rows: int, limits: IngestSettings,
                 ignored: _IgnoredNote | None = None) -> Iterator[pl.DataFrame]:
    with _open_input(path, limits) as handle:
        runs = _csv_runs(handle, path, limits.max_record_bytes)
        first = next(runs, None)
        if first is None:
            return
        data, ends, regular = first
        header = data[: int(ends[0])]
        rest = (data[int(ends[0]):], ends[1:] - ends[0], regular)
        if not header.strip():
            if rest[1].size or next(runs, None) is not None:
                raise UserError(f"{path}: the first line (the header) is empty")
            return
        names = _csv_header(header, path, limits)
        check_required_columns(path, names)
        if ignored is not None:
            ignored(*_unknown_columns(names))
        first_row = 1
        line, offset = 1 + header.count(b"\n"), len(header)  # where the data rows start in the file
        for body, body_ends, body_regular in _csv_blocks(chain([rest], runs), batch_rows, BLOCK_BYTES):
            frame = _csv_fast(body, int(body_ends.size), names) if body_regular else None
            if frame is None:
                frame = _csv_rows_slowly(body, body_ends, names)
            notes = _not_utf8_notes(body, body_ends, line, offset)
            line, offset = line + body.count(b"\n"), offset + len(body)
            del body
            yield frame.with_columns(  # a column of the file named like reader metadata is overridden
                pl.int_range(first_row, first_row + frame.height, dtype=pl.Int64).alias(SOURCE_ROW),
                pl.lit(None, pl.String).alias(TYPE_ERROR),
                pl.Series(NOT_UTF8, notes, dtype=pl.String) if notes else pl.lit(None, pl.String).alias(NOT_UTF8),
            )
            first_row += frame.height


# ---------------------------------------------------------------- JSON values


class _RepeatedKey(dict[str, Any]):
    """An object that repeats a key: parsers disagree on which value wins, so it is refused."""

    key: str = ""


def _object_from_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """The object, marked when it repeats a key (``uba.event_rules.repeated_key``, as the API)."""
    obj = dict(pairs)
    if len(obj) == len(pairs):
        return obj
    marked = _RepeatedKey(obj)
    marked.key = rules.repeated_key(pairs) or ""
    return marked


@functools.cache
def _json_decoder() -> json.JSONDecoder:
    """The one JSON parser of ingest (made once, on first use): repeated keys are marked."""
    return json.JSONDecoder(object_pairs_hook=_object_from_pairs)


def _without_surrogates(value: Any) -> Any:
    """The value with lone surrogates (escaped ``\\ud800`` in the JSON) as U+FFFD, in keys too.

    Such text cannot be stored as UTF-8; U+FFFD is what an invalid byte becomes in the
    other readers, so validation refuses it in ids the same way.
    """
    if isinstance(value, str):
        return _SURROGATE.sub("\ufffd", value)
    if isinstance(value, list):
        return [_without_surrogates(item) for item in value]
    if isinstance(value, dict):
        cleaned = {_without_surrogates(k): _without_surrogates(v) for k, v in value.items()}
        if isinstance(value, _RepeatedKey):
            marked = _RepeatedKey(cleaned)
            marked.key = _without_surrogates(value.key)
            return marked
        return cleaned
    return value


def _decoded(text: str, value: Any, start: int = 0, end: int | None = None) -> Any:
    """``value`` parsed from ``text[start:end]``, made storable if that text escapes a surrogate."""
    if _SURROGATE_ESCAPE.search(text, start, len(text) if end is None else end) is None:
        return value
    return _without_surrogates(value)


def _describe(value: Any) -> str:
    try:
        return _excerpt(json.dumps(value, default=str))
    except (RecursionError, ValueError):
        return type(value).__name__


def _record_error(value: Any, what: str, max_columns: int) -> str | None:
    """Why a parsed record cannot be read as an event (None when it can)."""
    if not isinstance(value, dict):
        return f"{what} is not a JSON object: {_describe(value)}"
    if isinstance(value, _RepeatedKey):
        return f"{what} {rules.MSG_REPEATED_KEY} {_excerpt(value.key)!r}"
    if len(value) > max_columns:
        return f"{what} has {len(value):,} fields, over ingest.max_columns ({max_columns:,})"
    if value and value.keys().isdisjoint(_KNOWN_KEYS):  # not an empty row: keys, none of them ours
        return f"{what} has no event field, only {', '.join(_excerpt(k) for k in islice(value, 5))}"
    return None


def _value_text(value: Any) -> str | None:
    """Text of a parsed JSON value, as the typed readers produce it."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        if value.is_integer() and abs(value) < rules.MAX_EXACT_INTEGER:  # 123.0 -> "123", as for Parquet
            return str(int(value))
        return repr(value)
    if isinstance(value, int):
        return str(value)
    return json.dumps(value, ensure_ascii=False)


def _type_errors(field: str, values: list[Any]) -> list[str | None] | None:
    """Per row, why the parsed value cannot be ``field`` by its JSON type (None: no row fails).

    The common case (every value of an allowed type) is one set of types per column.
    """
    allowed = rules.field_json_types(field)
    if set(map(type, values)) <= set(allowed):
        return None
    errors: list[str | None] = []
    for value in values:
        problem = rules.json_type_error(field, value)
        errors.append(None if problem is None else f"{field}: {problem}")
    return errors if any(errors) else None


def _text_column(values: list[Any]) -> tuple[list[str | None], list[int]]:
    """Text of one column's parsed values, and the rows whose value could not be written as text.

    Most columns hold only strings (kept as they are) or only strings and integers; the
    general conversion runs only for columns that need it.
    """
    kinds = set(map(type, values))
    if kinds <= {str, type(None)}:
        return values, []
    if kinds <= {str, int, type(None)}:
        return [v if v is None or type(v) is str else str(v) for v in values], []
    texts: list[str | None] = []
    failed: list[int] = []
    for index, value in enumerate(values):
        try:
            texts.append(_value_text(value))
        except (RecursionError, ValueError):  # nested too deeply to print, or a 4,300-digit integer
            texts.append(None)
            failed.append(index)
    return texts, failed


_KNOWN_KEYS = frozenset(RAW_FIELDS)


def _unknown_keys(objects: list[dict[str, Any]], limit: int) -> tuple[list[str], bool]:
    """Keys outside the event schema, in order of appearance: at most ``limit`` names, and
    whether there were more. Objects with only event fields (the usual case) cost one
    C-level set comparison each."""
    names: dict[str, None] = {}
    more = False
    for obj in objects:
        if obj.keys() <= _KNOWN_KEYS:
            continue
        for key in obj:
            if key not in _KNOWN_KEYS and key not in names:
                if len(names) >= limit:
                    more = True
                    break
                names[key] = None
        if more:
            break
    return list(names), more


def _records_frame(records: Sequence[tuple[int, Any, str | None]], what: str, max_columns: int,
                   ignored: _IgnoredNote | None = None) -> pl.DataFrame:
    """Frame of the event fields, as text, from parsed records ``(row, value, read_error)``.

    A record that cannot be read keeps its row (with the fields it has, or all null) and
    the reason, so it is quarantined rather than dropped. Only the event fields become
    columns: a key outside the event schema is named to ``ignored`` (at most
    ``MAX_IGNORED_NAMES`` of them) and never materialised, so 250,000 lines with a key
    each cost 250,000 rows, not 250,000 x 250,000 null cells. A value of the wrong JSON
    type for its field (``uba.event_rules.json_type_error``) is named in ``type_error``.
    """
    errors = [error or _record_error(value, what, max_columns) for _, value, error in records]
    objects = [value if isinstance(value, dict) and len(value) <= max_columns else {} for _, value, _ in records]
    if ignored is not None:
        ignored(*_unknown_keys(objects, MAX_IGNORED_NAMES))
    columns: dict[str, list[Any]] = {}
    type_errors: list[str | None] = [None] * len(objects)
    for key in RAW_FIELDS:
        values = [obj.get(key) for obj in objects]
        wrong = _type_errors(key, values)
        if wrong is not None:
            type_errors = [first or this for first, this in zip(type_errors, wrong, strict=True)]
        columns[key], failed = _text_column(values)
        for index in failed:
            errors[index] = errors[index] or f"{what} {NESTED_TOO_DEEP}"
    columns[SOURCE_ROW] = [row for row, _, _ in records]
    columns[READ_ERROR] = errors
    columns[TYPE_ERROR] = type_errors
    schema = {key: pl.String for key in columns} | {SOURCE_ROW: pl.Int64}
    return pl.DataFrame(columns, schema=schema)


# ---------------------------------------------------------------- JSON Lines


def _jsonl_line(line: bytes) -> tuple[Any, str | None]:
    text = line.decode("utf-8", errors="replace")
    try:
        return _decoded(text, _json_decoder().decode(text)), None
    except json.JSONDecodeError as exc:
        what = exc.msg
        if what.startswith("Invalid control character"):  # a raw CR, tab, ... inside a string
            what = f"raw control character {text[exc.pos]!r} inside a string, which JSON forbids,"
        return None, f"line is not valid JSON ({what} at column {exc.colno}): {_excerpt(text)!r}"
    except RecursionError:
        return None, f"line {NESTED_TOO_DEEP}"
    except ValueError as exc:  # e.g. an integer of more than 4,300 digits
        return None, f"line is not readable JSON: {_excerpt(str(exc))}"


def _bounded_lines(handle: storage.InputStream, path: Path, limit: int) -> Iterator[tuple[int, bytes]]:
    """Numbered lines, none longer than ``limit`` bytes (a longer one stops the run).

    A line ends at ``\\n`` only (so ``\\r\\n`` too). A ``\\r`` anywhere else stays in its
    line: between tokens it is JSON whitespace, inside a string it is a raw control
    character the JSON parser refuses, so the line is quarantined once and the text after
    the CR can never become a record of its own (a CR used to end a line, which let a
    string value forge an event). A file of lone-CR line ends (old Mac) is therefore one
    line; ``_jsonl_batches`` refuses it with one line. A UTF-8 byte order mark at the
    start of the file is dropped, as for CSV and JSON arrays.
    """
    number = 0
    tail = b""
    first = True
    while True:
        chunk = handle.read(CSV_READ_BYTES)
        eof = not chunk
        data = tail + chunk if tail else chunk
        if first and (len(data) >= len(_BOM) or eof):
            first = False
            data = data.removeprefix(_BOM)
        lines = data.split(b"\n")
        tail = lines.pop()  # after the last \n: unfinished, or the last line of the file
        if eof and tail:
            lines.append(tail)
            tail = b""
        last = len(lines) - 1 if eof else -1
        for index, line in enumerate(lines):
            number += 1
            if len(line) - line.endswith(b"\r") > limit:
                raise _record_too_long(path, f"line {number:,}", limit)
            yield number, line if index == last and not data.endswith(b"\n") else line + b"\n"
        if len(tail) > limit + 1:
            raise _record_too_long(path, f"line {number + 1:,}", limit)
        if eof:
            return


def _cr_only_file(path: Path, numbered: list[tuple[int, Any, str | None]]) -> None:
    """Refuse a file whose only line (no ``\\n`` at all) holds lone CRs and is not JSON:
    old Mac line ends.

    A file with a ``\\n`` never gets here, so a raw CR inside a string of a normal file
    cannot make its whole file refused: that line alone is quarantined.
    """
    if numbered and numbered[0][2] is not None:
        raise UserError(f"{path}: the file has no \\n line end but holds \\r: JSON Lines records end at "
                        "\\n or \\r\\n only (\\r-only line ends are not read, so text inside a string can "
                        "never start a record); convert the line ends and re-run")


def _take(lines: Iterator[tuple[int, bytes]], count: int, max_bytes: int) -> list[tuple[int, bytes]]:
    """Up to ``count`` lines and about ``max_bytes`` bytes of them."""
    taken: list[tuple[int, bytes]] = []
    size = 0
    for item in lines:
        taken.append(item)
        size += len(item[1])
        if len(taken) >= count or size >= max_bytes:
            break
    return taken


def _jsonl_batches(path: Path, batch_rows: int, limits: IngestSettings,
                   ignored: _IgnoredNote | None = None) -> Iterator[pl.DataFrame]:
    """Line-batched JSON Lines; ``source_row`` is the line number, blank lines are skipped.

    Every line goes through Python's JSON parser: a columnar reader would take the first
    of two repeated keys where this one takes the last, and would turn an object id
    into text, so two parsers would disagree about what a line says.
    """
    with _open_input(path, limits) as handle:
        lines = _bounded_lines(handle, path, limits.max_record_bytes)
        while block := _take(lines, batch_rows, BLOCK_BYTES):
            numbered = [(n, *_jsonl_line(line)) for n, line in block if line.strip()]
            if block[0][0] == 1 and not block[0][1].endswith(b"\n") and b"\r" in block[0][1].rstrip(b"\r"):
                _cr_only_file(path, numbered)
            if numbered:
                yield _records_frame(numbered, "line", limits.max_columns, ignored)


# ---------------------------------------------------------------- JSON array


@dataclass(frozen=True)
class _Unreadable:
    """An array element that was skipped instead of decoded, with the reason."""

    reason: str


def _maybe_cut(exc: json.JSONDecodeError, text: str) -> bool:
    """Whether a decode error may only mean the element continues past the buffer."""
    return exc.pos >= len(text) - 1 or exc.msg.startswith("Unterminated string")


def _value_end(text: str, start: int) -> int | None:
    """End of the JSON value at ``start`` found by brackets and strings alone (None: not in ``text``)."""
    if text[start] not in "[{\"":
        match = _JSON_SCALAR.match(text, start)
        return match.end() if match and match.end() < len(text) else None
    depth = 0
    for token in _JSON_TOKEN.finditer(text, start):
        first = token.group()
        if first == '"':  # a string that does not end within the text
            return None
        if first[0] in "[{":
            depth += 1
        elif first[0] in "]}":
            depth -= 1
        if depth == 0:
            return token.end()
    return None


class _JsonArrayReader:
    """Elements of a top-level JSON array, decoded one at a time from a sliding text buffer.

    Memory holds one read block plus one element (at most ``max_record_bytes``
    characters), whatever the file size. An element too deeply nested to decode is
    skipped by bracket matching and reported; a syntax error cannot be resynchronised
    (the next element's start is unknown), so it stops the run with the element number
    and byte offset; batches of the file before it have already been ingested. Anything
    but JSON whitespace after the closing bracket (a second array, text) is such an
    error too: a file is one array, and nothing in it is silently left unread.
    """

    def __init__(self, handle: storage.InputStream, path: Path, limit: int) -> None:
        self._text = io.TextIOWrapper(handle, encoding="utf-8", errors="replace")
        self._path = path
        self._limit = limit
        self._buf = ""
        self._pos = 0
        self._dropped_bytes = 0  # UTF-8 size of the text before the buffer (exact for valid UTF-8)
        self._eof = False
        self._decoder = _json_decoder()

    def _fill(self) -> bool:
        if self._eof:
            return False
        more = self._text.read(JSON_READ_CHARS)
        if not more:
            self._eof = True
            return False
        self._dropped_bytes += len(self._buf[:self._pos].encode("utf-8", "surrogatepass"))
        self._buf = self._buf[self._pos:] + more
        self._pos = 0
        return True

    def _byte_offset(self) -> int:
        """Offset in the file of the current position, counting a byte order mark."""
        return self._dropped_bytes + len(self._buf[:self._pos].encode("utf-8", "surrogatepass"))

    def _room(self) -> bool:
        return len(self._buf) - self._pos < self._limit

    def _next_char(self) -> str:
        """Skip JSON whitespace (space, tab, CR, LF) and return the next character ('' at the end)."""
        while True:
            while self._pos < len(self._buf) and self._buf[self._pos] in _JSON_WHITESPACE:
                self._pos += 1
            if self._pos < len(self._buf):
                return self._buf[self._pos]
            if not self._fill():
                return ""

    def _fail(self, index: int, what: str) -> UserError:
        return UserError(
            f"{self._path}: not a valid JSON array at element {index} (byte {self._byte_offset():,}): {what} "
            f"(earlier batches of the file were ingested, the batch holding it was not; fix the file and "
            f"re-run, stored rows are skipped as duplicates)"
        )

    def _skip(self, index: int, reason: str) -> _Unreadable:
        """Move past an element the decoder cannot take, by brackets and strings alone."""
        while (end := _value_end(self._buf, self._pos)) is None:
            if not self._room():
                raise _record_too_long(self._path, f"element {index:,}", self._limit)
            if not self._fill():
                raise self._fail(index, "the element never ends")
        self._pos = end
        return _Unreadable(reason)

    def _decode(self, index: int) -> Any:
        while True:
            try:
                value, end = self._decoder.raw_decode(self._buf, self._pos)
            except json.JSONDecodeError as exc:
                if _maybe_cut(exc, self._buf) and self._room() and self._fill():
                    continue
                if not self._room():
                    raise _record_too_long(self._path, f"element {index:,}", self._limit) from exc
                raise self._fail(index, exc.msg) from exc
            except RecursionError:
                return self._skip(index, f"element {NESTED_TOO_DEEP}")
            except ValueError as exc:  # e.g. an integer of more than 4,300 digits
                return self._skip(index, f"element is not readable JSON: {_excerpt(str(exc))}")
            # A number cut at the block edge decodes "successfully"; be sure it is whole.
            if end >= len(self._buf) and self._fill():
                continue
            if end - self._pos > self._limit:
                raise _record_too_long(self._path, f"element {index:,}", self._limit)
            value = _decoded(self._buf, value, self._pos, end)
            self._pos = end
            return value

    def _after_array(self, count: int) -> None:
        """Refuse anything but whitespace after the closing bracket (it used to be dropped unread)."""
        if self._next_char() != "":
            raise UserError(
                f"{self._path}: content after the closing ']' of the top-level array, at byte "
                f"{self._byte_offset():,} (after {count:,} elements): a .json input holds exactly one "
                f"array (use JSON Lines for one object per line); earlier batches of the file were "
                f"ingested, the last one was not"
            )

    def __iter__(self) -> Iterator[Any]:
        if self._fill() and self._buf.startswith(_BOM_TEXT):
            self._pos = 1  # a byte order mark, as for CSV (still counted in byte offsets)
        if self._next_char() != "[":
            raise UserError(f"{self._path}: a .json input must hold one JSON array of event objects")
        self._pos += 1
        index = 0
        if self._next_char() == "]":
            self._pos += 1
            self._after_array(index)
            return
        while True:
            index += 1
            if self._next_char() == "":
                raise self._fail(index, "the array is not closed")
            value = self._decode(index)
            sep = self._next_char()
            self._pos += 1
            if sep == "]":
                self._after_array(index)  # before the last element is handed on: refused whole
                yield value
                return
            if sep != ",":
                raise self._fail(index + 1, f"expected ',' or ']' but found {sep or 'end of file'!r}")
            yield value


def _json_array_batches(path: Path, batch_rows: int, limits: IngestSettings,
                        ignored: _IgnoredNote | None = None) -> Iterator[pl.DataFrame]:
    """JSON array read element by element; ``source_row`` is the 1-based element index."""
    with _open_input(path, limits) as handle:
        elements = enumerate(_JsonArrayReader(handle, path, limits.max_record_bytes), start=1)
        while block := list(islice(elements, batch_rows)):
            records = [(i, None, v.reason) if isinstance(v, _Unreadable) else (i, v, None) for i, v in block]
            yield _records_frame(records, "element", limits.max_columns, ignored)


# ---------------------------------------------------------------- Parquet


def _valid_text(frame: pl.DataFrame) -> pl.DataFrame:
    """String columns checked to be UTF-8: Arrow does not check a Parquet string column, and
    Polars panics on invalid bytes later; such bytes are decoded with U+FFFD, as in CSV."""
    fixed = []
    for name, dtype in frame.schema.items():
        if dtype != pl.String:
            continue
        raw = frame.get_column(name).cast(pl.Binary)
        try:
            raw.cast(pl.String)
        except pl.exceptions.ComputeError:
            fixed.append(pl.Series(name, [None if b is None else b.decode("utf-8", "replace")
                                          for b in raw.to_list()], dtype=pl.String))
    return frame.with_columns(fixed) if fixed else frame


def _check_column_types(frame: pl.DataFrame, source: str) -> None:
    """Refuse event fields of a type with no text form (a duration), naming file, column and type."""
    refused = unreadable_columns(frame.schema)
    if refused:
        name, dtype = refused[0]
        raise UserError(f"{source}: column {_excerpt(name)!r} has type {dtype}, which cannot hold "
                        f"an event field (expected text, numbers, datetimes or booleans)")


def _parquet_columns(parquet: Any, path: Path, limits: IngestSettings,
                     ignored: _IgnoredNote | None) -> list[str]:
    """The event columns to read, from the footer alone; refuses with one line (naming file
    and column) what would otherwise crash the read: a repeated event column, a type Polars
    cannot import. Columns outside the event schema are named, never read."""
    schema = parquet.schema_arrow
    names = schema.names
    if len(names) > limits.max_columns:
        raise UserError(f"{path}: has {len(names):,} columns, over ingest.max_columns ({limits.max_columns:,})")
    check_required_columns(path, names)
    if ignored is not None:
        ignored(*_unknown_columns(dict.fromkeys(names)))
    counts = Counter(names)
    wanted = [name for name in RAW_FIELDS if name in counts]
    for name in wanted:
        if counts[name] > 1:
            raise UserError(f"{path}: column {name!r} appears {counts[name]} times; parsers disagree on "
                            "which one holds the field, so the file is refused")
        kind = schema.field(name).type
        why = storage.polars_import_problem(kind)
        if why is not None:
            raise UserError(f"{path}: column {name!r} has type {_excerpt(str(kind))}, {why}, which cannot "
                            "hold an event field")
    return wanted


def _check_row_group(metadata: Any, index: int, columns: list[str], path: Path, limits: IngestSettings,
                     total: int) -> int:
    """Refuse a row group whose event columns would decompress past the limits, from the
    footer, before a byte of it is inflated (an 11.7 KB zstd file can hold a 300 MB
    string). Returns the running decompressed total of the file."""
    group = metadata.row_group(index)
    rows = max(group.num_rows, 1)
    wanted = set(columns)
    sizes: Counter[str] = Counter()
    for leaf in range(group.num_columns):
        chunk = group.column(leaf)
        top = chunk.path_in_schema.split(".", 1)[0]
        if top in wanted:
            sizes[top] += chunk.total_uncompressed_size
    size = sum(sizes.values())
    total += size
    where = f"{path}: row group {index + 1:,} of {metadata.num_row_groups:,}"
    if total > limits.max_decompressed_bytes:
        raise UserError(f"{where} takes the file past ingest.max_decompressed_bytes "
                        f"({limits.max_decompressed_bytes:,} bytes decompressed); raise the limit if it is genuine")
    if size > rows * limits.max_record_bytes:
        raise UserError(f"{where} decompresses to {size:,} bytes for {group.num_rows:,} rows, over "
                        f"ingest.max_record_bytes ({limits.max_record_bytes:,}) per row")
    for name, column_size in sizes.items():
        if column_size > rows * limits.max_field_bytes:
            raise UserError(f"{where}: column {name!r} decompresses to {column_size:,} bytes for "
                            f"{group.num_rows:,} rows, over ingest.max_field_bytes ({limits.max_field_bytes:,}) "
                            "per value")
    return total


def _text_columns(parquet: Any, columns: list[str]) -> list[str]:
    """The event columns stored as strings or bytes: read as dictionaries, so their decoded
    size is known (from the dictionary's value lengths) before a value is decoded."""
    from pyarrow import types

    schema = parquet.schema_arrow
    # string_view / binary_view are stored as plain byte arrays and read back as dictionaries
    # too; left out, a 138 KB file of one 60,000-byte view value on 20,000 rows took 4 GB
    text = (types.is_string, types.is_large_string, types.is_binary, types.is_large_binary,
            types.is_string_view, types.is_binary_view)
    kinds = {name: schema.field(name).type for name in columns}
    return [name for name, kind in kinds.items()
            if any(test(kind.value_type if types.is_dictionary(kind) else kind) for test in text)]


def _nested_columns(parquet: Any, columns: list[str]) -> dict[str, str]:
    """Event columns of a nested Parquet type (list, struct, map), with what the values are.

    No event field can be nested, so every row of such a column is quarantined without its
    values being read: their decoded size is not bounded by the footer or the dictionaries
    (a 16 KB file of one repeated 60,000-byte string in a list decoded to 1 GB)."""
    from pyarrow import types

    schema = parquet.schema_arrow
    nested = {}
    for name in columns:
        kind = schema.field(name).type
        if types.is_nested(kind):
            what = "an object" if types.is_struct(kind) or types.is_map(kind) else "an array"
            nested[name] = f"{what} (a Parquet {_excerpt(str(kind))}; its values were not read)"
    return nested


def _fixed_widths(parquet: Any, columns: list[str]) -> dict[str, int]:
    """Byte width of each event column of type fixed_size_binary (no dictionary read exists
    for it: every value decodes to exactly that many bytes, known from the footer)."""
    from pyarrow import types

    schema = parquet.schema_arrow
    return {name: schema.field(name).type.byte_width for name in columns
            if types.is_fixed_size_binary(schema.field(name).type)}


def _too_wide_reason(name: str, width: int, limit: int) -> str:
    return (f"field {_excerpt(name)!r} is a Parquet fixed_size_binary column of {width:,} bytes per value, "
            f"over ingest.max_field_bytes ({limit:,}); its values were not read")


def _rows_per_read(batch_rows: int, widths: Iterable[int]) -> int:
    """Rows per read batch: ``batch_rows``, fewer when fixed-size binary columns would decode
    past ``PARQUET_BLOCK_BYTES`` (20,000 rows of 60,000 bytes are 1.2 GB, from a 138 KB file)."""
    row_bytes = sum(widths)
    return min(batch_rows, max(1, PARQUET_BLOCK_BYTES // row_bytes)) if row_bytes else batch_rows


def _nested_reasons(nested: dict[str, str]) -> pl.Expr:
    """The quarantine reason of every row of a file with nested event columns (the first one
    named), worded as validation words a JSON object or array in that field."""
    name = min(nested, key=lambda field: field not in rules.ID_FIELDS)  # ids first, as validation checks
    what = nested[name]
    wanted = "a string or an integer" if name in rules.ID_FIELDS else "a single value"
    return pl.lit(f"{name}: must be {wanted}, not {what}")


def _value_lengths(column: Any) -> Any:
    """Byte length of each value of a dictionary column, gathered from the dictionary's value
    lengths by the indices: nothing is decoded."""
    import pyarrow as pa
    import pyarrow.compute as pc

    return pa.chunked_array([pc.take(pc.binary_length(chunk.dictionary).cast(pa.int64()), chunk.indices)
                             for chunk in column.chunks], type=pa.int64())


def _check_decoded(table: Any, text: list[str], where: str, limits: IngestSettings, total: int) -> int:
    """Refuse a read batch whose event columns decode past ``max_decompressed_bytes`` (file
    total), counted from the dictionaries before any value is decoded: the footer gives the
    encoded size, and a 51 KB file can repeat one 60,000-byte value on 20,000 rows."""
    import pyarrow.compute as pc

    sizes = {name: (pc.sum(_value_lengths(table.column(name))).as_py() or 0) if name in text
             else table.column(name).nbytes for name in table.column_names}
    total += sum(sizes.values())
    if total > limits.max_decompressed_bytes:
        name = max(sizes, key=lambda key: sizes[key])
        raise UserError(f"{where} decodes to {sum(sizes.values()):,} bytes (column {_excerpt(name)!r}: "
                        f"{sizes[name]:,}), taking the file past ingest.max_decompressed_bytes "
                        f"({limits.max_decompressed_bytes:,} bytes); raise the limit if it is genuine")
    return total


def _decode_bounded(batch: Any, text: list[str], limit: int) -> tuple[Any, dict[str, Any]]:
    """``batch`` with its dictionary columns decoded, every value over ``limit`` bytes replaced
    (in the dictionary, before decoding) by its first KEPT_CHARS characters and "...";
    also the value lengths of the columns that had such values."""
    import pyarrow as pa
    import pyarrow.compute as pc

    over: dict[str, Any] = {}
    arrays = []
    for name in batch.column_names:
        column = batch.column(name)
        if name not in text:
            arrays.append(column)
            continue
        lengths = _value_lengths(column)
        if (pc.max(lengths).as_py() or 0) > limit:
            over[name] = lengths
        chunks = []
        for chunk in column.chunks:
            dictionary = chunk.dictionary
            long = pc.greater(pc.binary_length(dictionary), limit)
            if pc.any(long).as_py():
                cut = [None if value is None else value[:KEPT_CHARS] + ("..." if isinstance(value, str) else b"...")
                       for value in dictionary.filter(long).to_pylist()]
                dictionary = pc.replace_with_mask(dictionary, long, pa.array(cut, dictionary.type))
            chunks.append(pc.take(dictionary, chunk.indices))
        arrays.append(pa.chunked_array(chunks, type=column.type.value_type))
    return pa.table(arrays, names=batch.column_names), over


def _oversized_reasons(over: dict[str, Any], limit: int) -> pl.Series | None:
    """The quarantine reason of each row with a value over ``limit`` (as ``_flag_oversized_fields``)."""
    if not over:
        return None
    lengths = pl.DataFrame({name: pl.Series(values.combine_chunks().to_numpy(zero_copy_only=False))
                            for name, values in over.items()})
    return lengths.select(pl.coalesce([
        pl.when(pl.col(name) > limit).then(pl.concat_str(
            pl.lit(f"field {_excerpt(name)!r} is "), pl.col(name).cast(pl.String),
            pl.lit(f" bytes, over ingest.max_field_bytes ({limit:,}); kept cut to {KEPT_CHARS} characters"),
        ))
        for name in over
    ]).alias(READ_ERROR)).to_series()


def _bounded_slices(group: Any, text: list[str], batch_rows: int, limit: int) -> Iterator[tuple[int, int]]:
    """(offset, rows) slices of a row group of at most ``batch_rows`` rows and about
    ``PARQUET_BLOCK_BYTES`` decoded text (each value counted up to ``limit``: a longer one is cut before
    decoding), so a batch's memory follows its decoded size, not its row count."""
    import pyarrow.compute as pc

    rows = group.num_rows
    weights = np.full(rows, 16, dtype=np.int64)
    for name in text:
        lengths = pc.min_element_wise(_value_lengths(group.column(name)), limit)
        weights += pc.fill_null(lengths, 0).to_numpy()
    ends = np.cumsum(weights)
    start = 0
    while start < rows:
        base = int(ends[start - 1]) if start else 0
        end = int(np.searchsorted(ends, base + PARQUET_BLOCK_BYTES, side="right"))
        end = min(max(end, start + 1), start + batch_rows, rows)
        yield start, end - start
        start = end


def _parquet_batches(path: Path, batch_rows: int, limits: IngestSettings,
                     ignored: _IgnoredNote | None = None) -> Iterator[pl.DataFrame]:
    """Parquet batches of up to ``batch_rows`` rows and about ``PARQUET_BLOCK_BYTES``
    (``_parquet_frames`` joined by ``_joined_frames``)."""
    return _joined_frames(_parquet_frames(path, batch_rows, limits, ignored), batch_rows, PARQUET_BLOCK_BYTES)


def _joined_frames(frames: Iterable[pl.DataFrame], rows: int, max_bytes: int) -> Iterator[pl.DataFrame]:
    """Consecutive ``frames`` joined into frames of at most ``rows`` rows and about ``max_bytes``.

    A Parquet file is read one row group at a time, and each frame read becomes an ingest
    batch with parts of its own: a 4 MB file of 3,000 one-row row groups wrote 3,000 parts,
    rewriting the partition's manifest each time (minutes, and every later read lists them).
    """
    held: list[pl.DataFrame] = []
    count, size = 0, 0.0  # estimated_size is an int or a float
    try:
        for frame in frames:
            if held and (count + frame.height > rows or size + frame.estimated_size() > max_bytes):
                yield pl.concat(held, how="vertical_relaxed")
                held, count, size = [], 0, 0.0
            held.append(frame)
            count += frame.height
            size += frame.estimated_size()
    except Exception:  # a row group refused later: what was read before it is still stored
        if held:
            yield pl.concat(held, how="vertical_relaxed")
        raise
    if held:
        yield pl.concat(held, how="vertical_relaxed")


def _parquet_frames(path: Path, batch_rows: int, limits: IngestSettings,
                    ignored: _IgnoredNote | None = None) -> Iterator[pl.DataFrame]:
    """Parquet row batches of the event columns with their stored types; validation turns
    them into text. The footer is checked first (``_parquet_columns``), then each row group
    (``_check_row_group``) just before it is read, one at a time. String and byte columns are
    read as dictionaries (still encoded), ``batch_rows`` rows at a time; each batch's decoded
    size is checked from the dictionaries' value lengths (``_check_decoded``), it is decoded in
    slices of about ``PARQUET_BLOCK_BYTES`` (``_bounded_slices``), and a value over
    max_field_bytes is cut in the dictionary before decoding, its row quarantined
    (``_decode_bounded``). A fixed-size binary column has no dictionary read: it is read in
    batches that decode to about ``PARQUET_BLOCK_BYTES`` (``_rows_per_read``), or, wider than
    max_field_bytes, not read at all (every row quarantined naming it)."""
    first_row = 1
    total = 0
    decoded = 0
    with storage.open_parquet(path) as footer:
        wanted = _parquet_columns(footer, path, limits, ignored)
        nested = _nested_columns(footer, wanted)
        widths = _fixed_widths(footer, wanted)
        too_wide = {name: _too_wide_reason(name, width, limits.max_field_bytes)
                    for name, width in widths.items() if width > limits.max_field_bytes}
        columns = [name for name in wanted if name not in nested and name not in too_wide]
        text = _text_columns(footer, columns)
    read_rows = _rows_per_read(batch_rows, (widths[name] for name in columns if name in widths))
    import pyarrow as pa

    with storage.open_parquet(path, read_dictionary=text or None) as parquet:
        metadata = parquet.metadata
        for index in range(metadata.num_row_groups):
            total = _check_row_group(metadata, index, columns, path, limits, total)
            where = f"{path}: row group {index + 1:,} of {metadata.num_row_groups:,}"
            first_in_group = 1
            for batch in parquet.iter_batches(batch_size=read_rows, row_groups=[index], columns=columns):
                group = pa.Table.from_batches([batch])  # text columns still dictionary-encoded
                span = f"{where} (rows {first_in_group:,}-{first_in_group + batch.num_rows - 1:,})"
                decoded = _check_decoded(group, text, span, limits, decoded)
                first_in_group += batch.num_rows
                slices = (_bounded_slices(group, text, batch_rows, limits.max_field_bytes) if columns
                          else [(0, batch.num_rows)])
                frames = _decoded_frames(group, slices, text, path, limits, first_row)
                yield from (_with_unread_refused(_with_nested_refused(frame, nested), too_wide) for frame in frames)
                first_row += batch.num_rows


def _decoded_frames(group: Any, slices: Iterable[tuple[int, int]], text: list[str], path: Path,
                    limits: IngestSettings, first_row: int) -> Iterator[pl.DataFrame]:
    """The frames of one read batch, decoded slice by slice (``_decode_bounded``)."""
    for offset, rows_here in slices:
        table, over = _decode_bounded(group.slice(offset, rows_here), text, limits.max_field_bytes)
        frame = pl.from_arrow(table) if table.num_columns else pl.DataFrame()
        assert isinstance(frame, pl.DataFrame)
        if first_row == 1:
            _check_column_types(frame, str(path))
        rows = pl.int_range(first_row, first_row + rows_here, dtype=pl.Int64, eager=True)
        # No event column at all: the rows still count (each one quarantined as missing fields).
        if frame.width:
            frame = _valid_text(frame).with_columns(rows.alias(SOURCE_ROW))
        else:
            frame = rows.alias(SOURCE_ROW).to_frame()
        reasons = _oversized_reasons(over, limits.max_field_bytes)
        yield frame.with_columns(reasons if reasons is not None else pl.lit(None, pl.String).alias(READ_ERROR))
        first_row += rows_here


def _with_nested_refused(frame: pl.DataFrame, nested: dict[str, str]) -> pl.DataFrame:
    """``frame`` with its nested event columns present but empty, every row given their reason."""
    if not nested:
        return frame
    return frame.with_columns(
        *[pl.lit(None, pl.String).alias(name) for name in nested],
        pl.coalesce(pl.col(READ_ERROR), _nested_reasons(nested)).alias(READ_ERROR),
    )


def _with_unread_refused(frame: pl.DataFrame, reasons: dict[str, str]) -> pl.DataFrame:
    """``frame`` with the columns of ``reasons`` present but empty, every row given the first reason."""
    if not reasons:
        return frame
    return frame.with_columns(
        *[pl.lit(None, pl.String).alias(name) for name in reasons],
        pl.coalesce(pl.col(READ_ERROR), pl.lit(next(iter(reasons.values())))).alias(READ_ERROR),
    )


_READERS = {
    "csv": _csv_batches,
    "jsonl": _jsonl_batches,
    "json": _json_array_batches,
    "parquet": _parquet_batches,
}


def _flag_oversized_fields(frame: pl.DataFrame, limit: int) -> pl.DataFrame:
    """Quarantine rows with a text field over ``limit`` bytes, naming the field; keep it cut.

    Checked on whatever the reader produced, so the limit means the same for every format.
    """
    names = [name for name, dtype in frame.schema.items() if dtype == pl.String and name not in META_FIELDS]
    if not names:
        return frame
    longest = frame.select(pl.max_horizontal(pl.col(names).str.len_bytes().max())).item()
    if longest is None or longest <= limit:
        return frame
    over = {name: pl.col(name).str.len_bytes() > limit for name in names}
    reason = pl.coalesce([
        pl.when(oversized).then(pl.concat_str(
            pl.lit(f"field {_excerpt(name)!r} is "), pl.col(name).str.len_bytes().cast(pl.String),
            pl.lit(f" bytes, over ingest.max_field_bytes ({limit:,}); kept cut to {KEPT_CHARS} characters"),
        ))
        for name, oversized in over.items()
    ])
    return frame.with_columns(
        pl.coalesce(pl.col(READ_ERROR), reason).alias(READ_ERROR),
        *[pl.when(oversized).then(pl.col(name).str.slice(0, KEPT_CHARS) + "...").otherwise(pl.col(name)).alias(name)
          for name, oversized in over.items()],
    )


def read_batches(path: Path, fmt: str, batch_rows: int, limits: IngestSettings | None = None,
                 ignored: _IgnoredNote | None = None) -> Iterator[pl.DataFrame]:
    """Raw batches of one file with ``source_file`` and ``source_row``; at most ``batch_rows`` records each.

    ``source_row`` is 1-based: the data row for CSV (header not counted, so the file line
    is ``source_row + 1`` when no field holds a line break), the line for JSON Lines, the
    element for a JSON array, the row for Parquet. ``limits`` (default: the defaults of
    ``IngestSettings``) bounds fields, records, columns and decompressed size.
    ``ignored(names, more)`` is told the columns or keys outside the event schema (at most
    ``MAX_IGNORED_NAMES`` names; ``more`` when there were others); they are not read.
    """
    limits = limits or IngestSettings()
    source = str(path)
    try:
        for frame in _READERS[fmt](Path(path), batch_rows, limits, ignored):
            if frame.height == 0:
                continue
            checked = _flag_oversized_fields(frame, limits.max_field_bytes)
            yield checked.with_columns(pl.lit(source, pl.String).alias(SOURCE_FILE))
    except UserError:
        raise
    except (OSError, EOFError) as exc:  # truncated gzip, disk errors mid-file
        raise UserError(f"cannot read {path}: {exc}") from exc
    except (pl.exceptions.PolarsError, pl.exceptions.PanicException, ValueError) as exc:
        if fmt != "parquet":  # pyarrow's errors (a damaged page) are ValueErrors or OSErrors
            raise
        raise UserError(f"cannot read {path} as parquet: {_first_line(exc)}") from exc


# ---------------------------------------------------------------- summary


@dataclass
class FileSummary:
    """Counts for one input (a file, or a frame handed to ``ingest_frame``)."""

    path: str
    format: str
    rows_read: int = 0
    rows_written: int = 0
    rows_quarantined: int = 0
    ignored_columns: list[str] = field(default_factory=list)
    ignored_columns_truncated: bool = False

    def note_ignored(self, names: list[str], more: bool = False) -> None:
        """Record columns or keys outside the event schema: at most MAX_IGNORED_NAMES names,
        ``ignored_columns_truncated`` when there were more; new ones are logged."""
        known = set(self.ignored_columns)
        new = [name for name in names if name not in known]
        room = MAX_IGNORED_NAMES - len(self.ignored_columns)
        if len(new) > room or more:
            self.ignored_columns_truncated = True
        new = new[:max(room, 0)]
        if new:
            _log.warning("%s: ignoring columns not in the event schema: %s%s", self.path,
                         ", ".join(_excerpt(name) for name in new),
                         " (and more)" if self.ignored_columns_truncated else "")
            self.ignored_columns += new


@dataclass
class IngestSummary:
    """What one run read, stored and quarantined; ``rows_read == rows_written + rows_quarantined``."""

    run_id: str
    data_dir: str
    started_at: str
    finished_at: str | None = None
    status: str = "running"
    error: str | None = None
    rows_read: int = 0
    rows_written: int = 0
    rows_quarantined: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    reason_examples: dict[str, str] = field(default_factory=dict)
    dates: dict[str, dict[str, int]] = field(default_factory=dict)
    files: list[FileSummary] = field(default_factory=list)
    parts: list[str] = field(default_factory=list)
    seconds: float = 0.0
    summary_path: str | None = None
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, JsonValue]:
        """The summary as kept in ``<data-dir>/ingest_runs/`` and printed by ``--json``."""
        return asdict(self)

    def to_table(self) -> str:
        """Plain-text report for people; ``--json`` prints ``to_dict()`` instead. Each line
        is printable (``printable_line``): a file name holding a line break printed a forged
        ``inputs:`` line, and one holding an escape rewrote the terminal."""
        lines = [
            f"ingest run {self.run_id} ({self.status}, {self.seconds:.1f} s)",
            f"  rows read         {self.rows_read:>12,}",
            f"  rows written      {self.rows_written:>12,}",
            f"  rows quarantined  {self.rows_quarantined:>12,}",
        ]
        if self.reasons:
            lines.append("quarantine reasons:")
            for kind, count in sorted(self.reasons.items(), key=lambda kv: (-kv[1], kv[0])):
                lines.append(f"  {kind:<26}{count:>10,}   e.g. {self.reason_examples.get(kind, '')}")
        if self.dates:
            lines.append("dates:")
            for day, counts in sorted(self.dates.items()):
                lines.append(
                    f"  {day:<12}written {counts['written']:>10,}   quarantined {counts['quarantined']:>8,}"
                )
        lines.append("inputs:")
        for item in self.files:
            more = ", ..." if item.ignored_columns_truncated else ""
            ignored = f"   ignored columns: {', '.join(item.ignored_columns)}{more}" if item.ignored_columns else ""
            lines.append(
                f"  {item.path} ({item.format}): read {item.rows_read:,}, written {item.rows_written:,}, "
                f"quarantined {item.rows_quarantined:,}{ignored}"
            )
        lines += [f"warning: {warning}" for warning in self.warnings]
        if self.error:
            lines.append(f"error: {self.error}")
        if self.summary_path:
            lines.append(f"summary: {self.summary_path}")
        return "\n".join(printable_line(line) for line in lines)


# ---------------------------------------------------------------- writing


def _utc_now() -> datetime:
    return datetime.now(UTC)


class _Run:
    """State of one ingest run: where it writes, what it has counted so far."""

    def __init__(self, data_dir: Path, settings: Settings) -> None:
        started = _utc_now()
        self.data_dir = Path(data_dir)
        self.settings = settings
        self.ingested_at = started.replace(tzinfo=None)
        self.clock = time.perf_counter()
        self.batches = 0
        self.summary = IngestSummary(
            run_id=f"{started:%Y%m%dT%H%M%S%fZ}-{uuid.uuid4().hex[:8]}",
            data_dir=str(self.data_dir),
            started_at=started.isoformat(),
        )

    def _count_date(self, day: str, key: str, count: int) -> None:
        counts = self.summary.dates.setdefault(day, {"written": 0, "quarantined": 0})
        counts[key] += count

    def _write_events(self, valid: pl.DataFrame, part: str, written: list[_Written]) -> None:
        dated = valid.with_columns(pl.col("timestamp").dt.date().alias(PARTITION_COLUMN))
        for (day,), rows in sorted(dated.partition_by(PARTITION_COLUMN, as_dict=True).items()):
            ordered = rows.drop(PARTITION_COLUMN).sort(["timestamp", "event_id"])
            path = storage.write_part(ordered, self.data_dir, storage.EVENTS, day, name=part)
            written.append(_Written(path, day.isoformat(), "written", rows.height))

    def _write_quarantine(self, rejected: pl.DataFrame, part: str, written: list[_Written]) -> None:
        labelled = rejected.with_columns(
            pl.col(PARTITION_COLUMN).cast(pl.String).fill_null(UNKNOWN_PARTITION),
            pl.lit(self.ingested_at).dt.replace_time_zone("UTC").alias("ingested_at"),
        )
        for (day,), rows in sorted(labelled.partition_by(PARTITION_COLUMN, as_dict=True).items()):
            ordered = rows.sort([SOURCE_FILE, SOURCE_ROW]).select(
                [pl.col(name).cast(dtype) for name, dtype in QUARANTINE_SCHEMA.items()]
            )
            path = storage.write_part(ordered, self.data_dir, storage.QUARANTINE, day, name=part)
            written.append(_Written(path, day, "quarantined", rows.height))

    def _write_batch(self, valid: pl.DataFrame, rejected: pl.DataFrame,
                     item: FileSummary | Mapping[str, FileSummary]) -> None:
        """Write a batch's parts all or none: a failed write (a full disk) removes the others.

        Parts of earlier batches and of earlier runs are never touched, so a failed run
        leaves exactly what its summary lists.
        """
        part = f"part-{self.summary.run_id}-{self.batches:05d}"
        written: list[_Written] = []
        try:
            self._write_events(valid, part, written)
            self._write_quarantine(rejected, part, written)
        except (OSError, pl.exceptions.PolarsError) as exc:  # Polars reports ENOSPC as a ComputeError
            for done in written:
                storage.remove_part(done.path)
            raise UserError(
                f"cannot write to {self.data_dir}: {_os_reason(exc)}; the batch of {_batch_source(item)} being "
                "written was not stored (earlier batches were: re-running stores the rest and "
                "quarantines those rows as duplicates)"
            ) from exc
        for done in written:
            self.summary.parts.append(str(done.path.relative_to(self.data_dir)))
            self._count_date(done.day, done.key, done.rows)

    def _count_reasons(self, rejected: pl.DataFrame) -> None:
        firsts = rejected.group_by(REASON_KIND, maintain_order=True).agg(
            pl.len().alias("n"), pl.col("reason").first().alias("example")
        )
        for kind, count, example in firsts.iter_rows():
            self.summary.reasons[kind] = self.summary.reasons.get(kind, 0) + count
            self.summary.reason_examples.setdefault(kind, example)

    def ingest_batch(self, raw: pl.DataFrame, item: FileSummary | Mapping[str, FileSummary]) -> None:
        """Validate one batch against what is stored for its dates, then write both halves.

        ``item`` is the input the rows came from, or for a batch joined from several files
        the input of each ``source_file``."""
        lf = raw.lazy()
        days = event_dates(lf).collect().get_column(PARTITION_COLUMN).to_list()
        # The duplicate check and the write under the days' locks: a concurrent ingest of
        # the same data sees these rows as stored, never stores them a second time.
        with storage.ingest_locks(self.data_dir, days, self.settings.ingest.lock_timeout_sec):
            existing = storage.scan_event_ids(self.data_dir, days)
            valid, rejected = pl.collect_all(list(validate_events(lf, self.settings.events, existing)))
            if valid.height + rejected.height != raw.height:
                raise AssertionError(
                    f"validation lost rows: {raw.height} in, {valid.height} valid + {rejected.height} rejected"
                )
            self.batches += 1
            self._write_batch(valid, rejected, item)
        self._count_reasons(rejected)
        for target, read, quarantined in _per_input(item, raw, rejected):
            target.rows_read += read
            target.rows_written += read - quarantined
            target.rows_quarantined += quarantined
        self.summary.rows_read += raw.height
        self.summary.rows_written += valid.height
        self.summary.rows_quarantined += rejected.height
        source = _batch_source(item)
        _log.info(
            "batch %d of %s: %d rows, %d written, %d quarantined",
            self.batches, source, raw.height, valid.height, rejected.height,
        )

    def finish(self, error: str | None = None) -> IngestSummary:
        """Close the run: check the books balance and keep the summary next to the data."""
        summary = self.summary
        summary.finished_at = _utc_now().isoformat()
        summary.seconds = round(time.perf_counter() - self.clock, 3)
        summary.status = "failed" if error else "ok"
        summary.error = error
        if summary.rows_read != summary.rows_written + summary.rows_quarantined:
            raise AssertionError(f"ingest summary does not balance: {summary}")
        path = storage.ingest_run_path(self.data_dir, summary.run_id)
        summary.summary_path = str(path)
        try:
            storage.write_json_atomic(summary.to_dict(), path)
        except OSError as exc:
            first = f"{error}; " if error else "every batch was stored, but "
            raise UserError(f"{first}the run summary {path} could not be written: {_os_reason(exc)}") from exc
        return summary


@dataclass(frozen=True)
class _Written:
    """One part a batch wrote: where, for which partition, and how many rows."""

    path: Path
    day: str
    key: str
    rows: int


def _first_line(exc: BaseException) -> str:
    return _excerpt(first_line(exc))


def _os_reason(exc: Exception) -> str:
    """One line saying why a write failed, from an OSError or a Polars IO error."""
    if isinstance(exc, OSError):
        name = errno.errorcode.get(exc.errno or 0, "")
        text = exc.strerror or str(exc)
        return f"{text} ({name})" if name else text
    return first_line(exc).rsplit("IO error: ", 1)[-1]


def _unknown_columns(names: Iterable[str]) -> tuple[list[str], bool]:
    """Column names outside the event schema (reader metadata included): at most
    MAX_IGNORED_NAMES of them, and whether there were more."""
    unknown = [name for name in names if name not in _KNOWN_KEYS]
    return unknown[:MAX_IGNORED_NAMES], len(unknown) > MAX_IGNORED_NAMES


def _batch_source(item: FileSummary | Mapping[str, FileSummary]) -> str:
    """The input a batch came from, as log and error lines name it."""
    return item.path if isinstance(item, FileSummary) else f"{len(item)} files"


def _per_input(item: FileSummary | Mapping[str, FileSummary], raw: pl.DataFrame,
               rejected: pl.DataFrame) -> list[tuple[FileSummary, int, int]]:
    """(input, rows read, rows quarantined) of a batch, per input file of a joined batch."""
    if isinstance(item, FileSummary):
        return [(item, raw.height, rejected.height)]
    read = dict(raw.group_by(SOURCE_FILE).len().iter_rows())
    quarantined = dict(rejected.group_by(SOURCE_FILE).len().iter_rows())
    return [(item[source], count, quarantined.get(source, 0)) for source, count in read.items()]


class _SmallBatches:
    """Batches of different files joined until ``batch_rows`` rows or ``BLOCK_BYTES``.

    Every batch is validated and written on its own, with its own parts and a rewrite of
    each touched partition's manifest: 1,000 one-row CSV files took 108 s and left 1,000
    parts in one partition (the cost of a write grows with the parts listed, so 3,000
    files took many minutes). Only the batches of different files with the same columns
    and types are joined; one file's batches are sized by its reader and pass as they are.
    """

    def __init__(self, run: _Run) -> None:
        self._run = run
        self._held: list[tuple[pl.DataFrame, FileSummary]] = []
        self._rows = 0
        self._bytes = 0.0  # estimated_size is an int or a float

    def add(self, frame: pl.DataFrame, item: FileSummary) -> None:
        limit = self._run.settings.ingest.batch_rows
        size = frame.estimated_size()
        full = self._rows + frame.height > limit or self._bytes + size > BLOCK_BYTES
        # a file's reader already sized its own batches, and columns of other types are never
        # joined (each file's types are read as they are)
        if self._held and (full or self._held[-1][1] is item or frame.schema != self._held[0][0].schema):
            self.flush()
        self._held.append((frame, item))
        self._rows += frame.height
        self._bytes += size

    def flush(self) -> None:
        """Ingest what is held (emptied first, so a failed write is never retried)."""
        held, self._held, self._rows, self._bytes = self._held, [], 0, 0.0
        if len(held) == 1:
            self._run.ingest_batch(*held[0])
        elif held:
            items = {source: item for frame, item in held for source in frame.get_column(SOURCE_FILE).unique()}
            self._run.ingest_batch(pl.concat([frame for frame, _ in held]), items)


def _warn_of_empty_inputs(summary: IngestSummary) -> None:
    """A file with no data rows is not an error (an empty export happens), but a run that
    stores nothing must not look like one that stored a day: say so, in the log and the summary."""
    for item in summary.files:
        if item.rows_read == 0:
            warning = f"{item.path}: no data rows"
            _log.warning(warning)
            summary.warnings.append(warning)


def quarantine_share_exceeded(summary: IngestSummary, limit: float) -> str | None:
    """Why the run's exit code must not say success although it stored what it could: more
    than ``limit`` of the rows read were quarantined (a wrong export, a changed format).
    Rows refused as already stored (``duplicate event_id``) count as good ones: re-ingesting
    a file, or a retried delivery, is safe and exits as the first run did."""
    read = summary.rows_read
    bad = summary.rows_quarantined - summary.reasons.get(KIND_DUPLICATE, 0)
    if read <= 0 or bad <= limit * read:
        return None
    return (f"{bad:,} of {read:,} rows ({bad / read:.0%}) were quarantined, over ingest.max_quarantine_ratio "
            f"({limit:g}); the valid rows are stored, the others are in quarantine/ with their reasons "
            f"(summary: {summary.summary_path})")


def _run_inputs(run: _Run, inputs: Iterable[tuple[FileSummary, Iterable[pl.DataFrame]]]) -> IngestSummary:
    batches = _SmallBatches(run)
    try:
        for item, frames in inputs:
            run.summary.files.append(item)
            for frame in frames:
                batches.add(frame, item)
        batches.flush()
        _warn_of_empty_inputs(run.summary)
    except UserError as exc:
        error = str(exc)
        try:
            batches.flush()  # what was read before the error is stored, as it was batch by batch
        except UserError as second:
            error = f"{error}; then {second}"
        run.finish(error=error)  # a failed summary, or one error naming both failures
        raise
    return run.finish()


def ingest_files(
    inputs: Sequence[str | Path],
    data_dir: Path,
    settings: Settings,
    fmt: str | None = None,
) -> IngestSummary:
    """Ingest files or globs; every file is found and opened before anything is written.

    ``fmt`` overrides the extension (``auto`` or None uses ``settings.ingest.format``).
    """
    requested = fmt or settings.ingest.format
    files = storage.expand_inputs(str(p) for p in inputs)
    plan = [(path, detect_format(path, requested)) for path in files]
    for path, file_format in plan:
        storage.check_input_readable(path, file_format)
    batch_rows = settings.ingest.batch_rows
    limits = settings.ingest
    try:  # a mistyped --data-dir fails before anything is read, as one line
        Path(data_dir).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create the data directory {data_dir}: {exc.strerror or exc}") from exc
    run = _Run(data_dir, settings)
    items = ((FileSummary(str(path), file_format), path, file_format) for path, file_format in plan)
    return _run_inputs(
        run,
        ((item, read_batches(path, file_format, batch_rows, limits, item.note_ignored))
         for item, path, file_format in items),
    )


def _frame_batches(df: pl.DataFrame, source: str, batch_rows: int) -> Iterator[pl.DataFrame]:
    _check_column_types(df, source)
    if SOURCE_ROW not in df.columns:
        df = df.with_columns(pl.int_range(1, df.height + 1, dtype=pl.Int64).alias(SOURCE_ROW))
    if SOURCE_FILE not in df.columns:
        df = df.with_columns(pl.lit(source, pl.String).alias(SOURCE_FILE))
    for offset in range(0, df.height, batch_rows):
        yield df.slice(offset, batch_rows)


def ingest_frame(
    df: pl.DataFrame | pl.LazyFrame,
    data_dir: Path,
    settings: Settings,
    source: str = "<frame>",
) -> IngestSummary:
    """Validate and store events held in memory: the one writer of ``events/`` partitions.

    Any column types are accepted (they are validated as text, like a file); rows are
    processed in slices of ``settings.ingest.batch_rows`` so duplicates, partitions and
    the summary work exactly as for ``uba-batch ingest``.
    """
    frame = df.collect() if isinstance(df, pl.LazyFrame) else df
    run = _Run(data_dir, settings)
    item = FileSummary(source, "frame")
    item.note_ignored(*_unknown_columns(name for name in frame.columns if name not in META_FIELDS))
    batches = _frame_batches(frame, source, settings.ingest.batch_rows)
    return _run_inputs(run, [(item, batches)])

