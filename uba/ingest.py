"""Bring raw event files into the store: read in bounded batches, validate, write partitions.

Every value is read as text (nothing is inferred), so a bad value becomes a quarantined
row with a reason instead of a crash. Each batch is validated against the ids already
stored for the dates it touches (including parts written by earlier batches of the same
run) and written at once, so memory follows ``settings.ingest.batch_rows``, not the file.

``ingest_frame`` is the one event writer: ``uba-batch generate`` goes through it too, so
every row under ``events/`` passed the same checks.
"""

from __future__ import annotations

import csv
import io
import json
import math
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from itertools import islice
from pathlib import Path
from typing import Any

import polars as pl

from uba import io as storage
from uba.errors import UserError
from uba.logs import get_logger
from uba.schema import PARTITION_COLUMN, QUARANTINE_SCHEMA, RAW_FIELDS, UNKNOWN_PARTITION
from uba.settings import Settings
from uba.validate import (
    META_FIELDS,
    READ_ERROR,
    REASON_KIND,
    SOURCE_FILE,
    SOURCE_ROW,
    event_dates,
    validate_events,
)

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
JSON_READ_CHARS = 1 << 20
CSV_READ_BYTES = 1 << 20
MAX_JSON_ELEMENT_CHARS = 64 << 20

_log = get_logger("ingest")


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


def _value_text(value: Any) -> str | None:
    """Text of a parsed JSON value, matching what the columnar JSON reader produces."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        if value.is_integer() and abs(value) < 1e15:  # 123.0 -> "123", as the JSONL and Parquet readers do
            return str(int(value))
        return repr(value)
    if isinstance(value, int):
        return str(value)
    return json.dumps(value, ensure_ascii=False)


def _records_frame(records: Sequence[tuple[int, Any, str | None]]) -> pl.DataFrame:
    """Frame of text columns from parsed records ``(row, value, read_error)``.

    A record that is not an object keeps its row with all fields null and the reader's
    message, so it is quarantined rather than dropped.
    """
    keys: dict[str, None] = dict.fromkeys(RAW_FIELDS)
    for _, value, _ in records:
        if isinstance(value, dict):
            keys.update(dict.fromkeys(k for k in value if isinstance(k, str)))
    columns: dict[str, list[Any]] = {
        key: [_value_text(v.get(key)) if isinstance(v, dict) else None for _, v, _ in records]
        for key in keys
    }
    columns[SOURCE_ROW] = [row for row, _, _ in records]
    columns[READ_ERROR] = [error for _, _, error in records]
    schema = {key: pl.String for key in keys} | {SOURCE_ROW: pl.Int64, READ_ERROR: pl.String}
    return pl.DataFrame(columns, schema=schema)


def _object_or_error(value: Any, what: str) -> str | None:
    if isinstance(value, dict):
        return None
    return f"{what} is not a JSON object: {_excerpt(json.dumps(value, default=str))}"


# ---------------------------------------------------------------- CSV


def _csv_header(line: bytes, path: Path) -> list[str]:
    text = line.decode("utf-8-sig", errors="replace")
    names = [name.strip() for name in next(csv.reader([text]), [])]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise UserError(f"{path}: header repeats column {repeated[0]!r}")
    return names


def _after_lines(data: bytes, start: int, lines: int) -> int:
    """Offset just past the ``lines``-th line break from ``start`` (end of data if fewer)."""
    pos = start
    for _ in range(lines):
        found = data.find(b"\n", pos)
        if found < 0:
            return len(data)
        pos = found + 1
    return pos


def _csv_blocks(handle: Any, header: bytes, batch_rows: int) -> Iterator[bytes]:
    """Header + about ``batch_rows`` whole records, read in fixed-size chunks.

    Reading raw chunks (not a list of line objects) keeps a batch to a few copies of its
    bytes. A block never stops inside a quoted field: in RFC 4180 CSV a line break ends a
    record exactly when the number of quote characters before it is even. A malformed
    file with a stray quote would never balance, so at most ``batch_rows`` extra lines are
    taken; the parser then sees the damage and those rows are quarantined instead of the
    rest of the file being swallowed.
    """
    start = len(header)
    data = header
    eof = False
    while True:
        parts = [data]
        lines = data.count(b"\n", start)
        while lines < batch_rows and not eof:
            more = handle.read(CSV_READ_BYTES)
            eof = not more
            parts.append(more)
            lines += more.count(b"\n")
        data = b"".join(parts)
        del parts
        cut = _after_lines(data, start, batch_rows)
        quotes = data.count(b'"', start, cut)
        extra = 0
        while quotes % 2 and extra < batch_rows:
            found = data.find(b"\n", cut)
            if found < 0 and not eof:
                more = handle.read(CSV_READ_BYTES)
                eof = not more
                data += more
                continue
            end = len(data) if found < 0 else found + 1
            quotes += data.count(b'"', cut, end)
            cut, extra = end, extra + 1
            if found < 0:
                break
        if cut > start:
            yield data[:cut]
        if eof and cut >= len(data):
            return
        data = header + data[cut:]


def _csv_rows_slowly(chunk: bytes, names: list[str]) -> pl.DataFrame:
    """Record-by-record parse of a block the fast parser refused, flagging each bad record."""
    width = len(names)
    rows: list[list[str | None]] = []
    errors: list[str | None] = []
    reader = csv.reader(io.StringIO(chunk.decode("utf-8", errors="replace"), newline=""))
    while True:
        try:
            record = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            rows.append([None] * width)
            errors.append(f"row could not be parsed as CSV: {exc}")
            continue
        error = None
        if len(record) > width:
            extra = ",".join(record[width:])
            error = f"row has {len(record)} fields, header has {width} (extra: {_excerpt(extra)!r})"
        values: list[str | None] = list(record[:width])
        rows.append(values + [None] * (width - len(values)))
        errors.append(error)
    columns = {name: [row[i] for row in rows] for i, name in enumerate(names)}
    columns[READ_ERROR] = errors
    return pl.DataFrame(columns, schema={**{n: pl.String for n in names}, READ_ERROR: pl.String})


def _csv_block(block: bytes, header_size: int, names: list[str]) -> pl.DataFrame:
    """Parse header + records as text; a block the fast parser refuses goes record by record.

    Strict UTF-8 first (no copy); a block with invalid bytes is decoded with replacement
    characters, which validation then rejects in ids and categories.
    """
    for encoding in ("utf8", "utf8-lossy"):
        try:
            frame = pl.read_csv(block, infer_schema=False, encoding=encoding, raise_if_empty=False)
        except pl.exceptions.PolarsError:
            continue
        if frame.width == len(names):
            frame.columns = names
            return frame.with_columns(pl.lit(None, pl.String).alias(READ_ERROR))
        break
    return _csv_rows_slowly(block[header_size:], names)


def _csv_batches(path: Path, batch_rows: int) -> Iterator[pl.DataFrame]:
    with storage.open_input(path) as handle:
        header = handle.readline()
        if not header.strip():
            return
        if not header.endswith(b"\n"):
            header += b"\n"
        names = _csv_header(header, path)
        first_row = 1
        for block in _csv_blocks(handle, header, batch_rows):
            frame = _csv_block(block, len(header), names)
            del block
            yield frame.with_columns(
                pl.int_range(first_row, first_row + frame.height, dtype=pl.Int64).alias(SOURCE_ROW)
            )
            first_row += frame.height


# ---------------------------------------------------------------- JSON Lines


def _jsonl_line(line: bytes) -> tuple[Any, str | None]:
    text = line.decode("utf-8", errors="replace")
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        return None, f"line is not valid JSON ({exc.msg} at column {exc.colno}): {_excerpt(text)!r}"
    return value, _object_or_error(value, "line")


def _jsonl_fast(lines: list[bytes], numbers: list[int]) -> pl.DataFrame | None:
    """Columnar parse of well-formed lines; None when any line needs the careful path."""
    try:
        first = json.loads(lines[0])
        if not isinstance(first, dict):
            return None
        keys = [k for k in first if k not in RAW_FIELDS]
        schema = {name: pl.String for name in (*RAW_FIELDS, *keys)}
        body = b"\n".join(line.rstrip(b"\r\n") for line in lines) + b"\n"
        frame = pl.read_ndjson(io.BytesIO(body), schema=schema)
    except (pl.exceptions.PolarsError, ValueError, TypeError, AttributeError):
        return None
    if frame.height != len(lines):
        return None
    return frame.with_columns(
        pl.Series(SOURCE_ROW, numbers, dtype=pl.Int64), pl.lit(None, pl.String).alias(READ_ERROR)
    )


def _jsonl_batches(path: Path, batch_rows: int) -> Iterator[pl.DataFrame]:
    """Line-batched JSON Lines; ``source_row`` is the line number, blank lines are skipped."""
    with storage.open_input(path) as handle:
        line_no = 0
        while block := list(islice(handle, batch_rows)):
            numbered = [(line_no + i + 1, line) for i, line in enumerate(block) if line.strip()]
            line_no += len(block)
            if not numbered:
                continue
            numbers = [n for n, _ in numbered]
            lines = [line for _, line in numbered]
            frame = _jsonl_fast(lines, numbers)
            if frame is None:
                frame = _records_frame([(n, *_jsonl_line(line)) for n, line in numbered])
            yield frame


# ---------------------------------------------------------------- JSON array


class _JsonArrayReader:
    """Elements of a top-level JSON array, decoded one at a time from a sliding text buffer.

    Memory holds one read block plus one element, whatever the file size. A syntax error
    cannot be resynchronised (the next element's start is unknown), so it stops the run
    with the element number; elements before it have already been ingested.
    """

    def __init__(self, handle: Any, path: Path) -> None:
        self._text = io.TextIOWrapper(handle, encoding="utf-8-sig", errors="replace")
        self._path = path
        self._buf = ""
        self._pos = 0
        self._eof = False
        self._decoder = json.JSONDecoder()

    def _fill(self) -> bool:
        if self._eof:
            return False
        more = self._text.read(JSON_READ_CHARS)
        if not more:
            self._eof = True
            return False
        self._buf = self._buf[self._pos:] + more
        self._pos = 0
        return True

    def _next_char(self) -> str:
        """Skip whitespace and return the next character ('' at the end of the file)."""
        while True:
            while self._pos < len(self._buf) and self._buf[self._pos].isspace():
                self._pos += 1
            if self._pos < len(self._buf):
                return self._buf[self._pos]
            if not self._fill():
                return ""

    def _fail(self, index: int, what: str) -> UserError:
        return UserError(
            f"{self._path}: not a valid JSON array at element {index}: {what} "
            f"(elements before it were ingested; fix the file and re-run, stored rows are skipped as duplicates)"
        )

    def _decode(self, index: int) -> Any:
        while True:
            try:
                value, end = self._decoder.raw_decode(self._buf, self._pos)
            except json.JSONDecodeError as exc:
                if len(self._buf) - self._pos < MAX_JSON_ELEMENT_CHARS and self._fill():
                    continue
                raise self._fail(index, exc.msg) from exc
            # A number cut at the block edge decodes "successfully"; be sure it is whole.
            if end >= len(self._buf) and self._fill():
                continue
            self._pos = end
            return value

    def __iter__(self) -> Iterator[Any]:
        if self._next_char() != "[":
            raise UserError(f"{self._path}: a .json input must hold one JSON array of event objects")
        self._pos += 1
        index = 0
        if self._next_char() == "]":
            return
        while True:
            index += 1
            if self._next_char() == "":
                raise self._fail(index, "the array is not closed")
            yield self._decode(index)
            sep = self._next_char()
            self._pos += 1
            if sep == "]":
                return
            if sep != ",":
                raise self._fail(index + 1, f"expected ',' or ']' but found {sep or 'end of file'!r}")


def _json_array_batches(path: Path, batch_rows: int) -> Iterator[pl.DataFrame]:
    """JSON array read element by element; ``source_row`` is the 1-based element index."""
    with storage.open_input(path) as handle:
        elements = enumerate(_JsonArrayReader(handle, path), start=1)
        while block := list(islice(elements, batch_rows)):
            yield _records_frame([(i, v, _object_or_error(v, "element")) for i, v in block])


# ---------------------------------------------------------------- Parquet


def _parquet_batches(path: Path, batch_rows: int) -> Iterator[pl.DataFrame]:
    """Parquet row batches with their stored types; validation turns them into text."""
    first_row = 1
    for frame in storage.iter_parquet_batches(path, batch_rows):
        yield frame.with_columns(
            pl.int_range(first_row, first_row + frame.height, dtype=pl.Int64).alias(SOURCE_ROW),
            pl.lit(None, pl.String).alias(READ_ERROR),
        )
        first_row += frame.height


_READERS = {
    "csv": _csv_batches,
    "jsonl": _jsonl_batches,
    "json": _json_array_batches,
    "parquet": _parquet_batches,
}


def read_batches(path: Path, fmt: str, batch_rows: int) -> Iterator[pl.DataFrame]:
    """Raw batches of one file with ``source_file`` and ``source_row``; at most ``batch_rows`` records each.

    ``source_row`` is 1-based: the data row for CSV (header not counted, so the file line
    is ``source_row + 1`` when no field holds a line break), the line for JSON Lines, the
    element for a JSON array, the row for Parquet.
    """
    source = str(path)
    try:
        for frame in _READERS[fmt](Path(path), batch_rows):
            if frame.height == 0:
                continue
            yield frame.with_columns(pl.lit(source, pl.String).alias(SOURCE_FILE))
    except UserError:
        raise
    except (OSError, EOFError) as exc:  # truncated gzip, disk errors mid-file
        raise UserError(f"cannot read {path}: {exc}") from exc


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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_table(self) -> str:
        """Plain-text report for people; ``--json`` prints ``to_dict()`` instead."""
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
            ignored = f"   ignored columns: {', '.join(item.ignored_columns)}" if item.ignored_columns else ""
            lines.append(
                f"  {item.path} ({item.format}): read {item.rows_read:,}, written {item.rows_written:,}, "
                f"quarantined {item.rows_quarantined:,}{ignored}"
            )
        if self.error:
            lines.append(f"error: {self.error}")
        if self.summary_path:
            lines.append(f"summary: {self.summary_path}")
        return "\n".join(lines)


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

    def _write_events(self, valid: pl.DataFrame, part: str) -> None:
        dated = valid.with_columns(pl.col("timestamp").dt.date().alias(PARTITION_COLUMN))
        for (day,), rows in sorted(dated.partition_by(PARTITION_COLUMN, as_dict=True).items()):
            ordered = rows.drop(PARTITION_COLUMN).sort(["timestamp", "event_id"])
            path = storage.write_part(ordered, self.data_dir, storage.EVENTS, day, name=part)
            self.summary.parts.append(str(path.relative_to(self.data_dir)))
            self._count_date(day.isoformat(), "written", rows.height)

    def _write_quarantine(self, rejected: pl.DataFrame, part: str) -> None:
        labelled = rejected.with_columns(
            pl.col(PARTITION_COLUMN).cast(pl.String).fill_null(UNKNOWN_PARTITION),
            pl.lit(self.ingested_at).dt.replace_time_zone("UTC").alias("ingested_at"),
        )
        for (day,), rows in sorted(labelled.partition_by(PARTITION_COLUMN, as_dict=True).items()):
            ordered = rows.sort([SOURCE_FILE, SOURCE_ROW]).select(
                [pl.col(name).cast(dtype) for name, dtype in QUARANTINE_SCHEMA.items()]
            )
            path = storage.write_part(ordered, self.data_dir, storage.QUARANTINE, day, name=part)
            self.summary.parts.append(str(path.relative_to(self.data_dir)))
            self._count_date(day, "quarantined", rows.height)

    def _count_reasons(self, rejected: pl.DataFrame) -> None:
        firsts = rejected.group_by(REASON_KIND, maintain_order=True).agg(
            pl.len().alias("n"), pl.col("reason").first().alias("example")
        )
        for kind, count, example in firsts.iter_rows():
            self.summary.reasons[kind] = self.summary.reasons.get(kind, 0) + count
            self.summary.reason_examples.setdefault(kind, example)

    def ingest_batch(self, raw: pl.DataFrame, item: FileSummary) -> None:
        """Validate one batch against what is stored for its dates, then write both halves."""
        lf = raw.lazy()
        days = event_dates(lf).collect().get_column(PARTITION_COLUMN).to_list()
        existing = storage.scan_event_ids(self.data_dir, days)
        valid, rejected = pl.collect_all(list(validate_events(lf, self.settings.events, existing)))
        if valid.height + rejected.height != raw.height:
            raise AssertionError(
                f"validation lost rows: {raw.height} in, {valid.height} valid + {rejected.height} rejected"
            )
        self.batches += 1
        part = f"part-{self.summary.run_id}-{self.batches:05d}"
        self._write_events(valid, part)
        self._write_quarantine(rejected, part)
        self._count_reasons(rejected)
        for target in (item, self.summary):
            target.rows_read += raw.height
            target.rows_written += valid.height
            target.rows_quarantined += rejected.height
        _log.info(
            "batch %d of %s: %d rows, %d written, %d quarantined",
            self.batches, item.path, raw.height, valid.height, rejected.height,
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
        storage.write_json_atomic(summary.to_dict(), path)
        return summary


def _ignored_columns(frame: pl.DataFrame) -> list[str]:
    known = set(RAW_FIELDS) | set(META_FIELDS)
    return [name for name in frame.columns if name not in known]


def _note_columns(item: FileSummary, frame: pl.DataFrame) -> None:
    new = [c for c in _ignored_columns(frame) if c not in item.ignored_columns]
    if new:
        _log.warning("%s: ignoring columns not in the event schema: %s", item.path, ", ".join(new))
        item.ignored_columns += new


def _run_inputs(run: _Run, inputs: Iterable[tuple[FileSummary, Iterable[pl.DataFrame]]]) -> IngestSummary:
    try:
        for item, batches in inputs:
            run.summary.files.append(item)
            for frame in batches:
                _note_columns(item, frame)
                run.ingest_batch(frame, item)
    except UserError as exc:
        run.finish(error=str(exc))
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
    try:  # a mistyped --data-dir fails before anything is read, as one line
        Path(data_dir).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create the data directory {data_dir}: {exc.strerror or exc}") from exc
    run = _Run(data_dir, settings)
    return _run_inputs(
        run,
        ((FileSummary(str(path), file_format), read_batches(path, file_format, batch_rows))
         for path, file_format in plan),
    )


def _frame_batches(df: pl.DataFrame, source: str, batch_rows: int) -> Iterator[pl.DataFrame]:
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
    batches = _frame_batches(frame, source, settings.ingest.batch_rows)
    return _run_inputs(run, [(FileSummary(source, "frame"), batches)])

