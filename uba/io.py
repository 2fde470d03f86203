"""The only module that touches files: storage layout, scans and atomic writes.

Layout (Hive-style, readable by Polars, DuckDB, Spark and Arrow as-is)::

    <data-dir>/events/event_date=YYYY-MM-DD/*.parquet
    <data-dir>/quarantine/event_date=YYYY-MM-DD|unknown/*.parquet
    <data-dir>/aggregates/event_date=YYYY-MM-DD/*.parquet
    <output-dir>/{scores,flagged,flagged_users}/event_date=YYYY-MM-DD/*.parquet
    <output-dir>/runs/event_date=YYYY-MM-DD/manifest.json
    <output-dir>/.days/event_date=YYYY-MM-DD/<version>/...   what the day's links resolve to
    <data-dir>/.checksums/{events,aggregates}/event_date=YYYY-MM-DD/manifest.json   every part + sha256
    <data-dir>/.part-manifests.json                          manifests in use; partitions from before them

A scored day's other datasets and manifest are relative symlinks that all resolve
through one anchor, the real folder ``scores/event_date=D`` (its ``.version`` link), so
one atomic swap of that folder publishes the whole day (see the section "published
days" below). Reads of events and aggregates are checked against their partition's
manifest (see "stored-data integrity").

Every write goes to a temporary name in the destination directory and is renamed
into place, so a reader (or a crash) never sees half a file.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import errno
import fcntl
import fnmatch
import gzip
import hashlib
import json
import os
import re
import shutil
import signal
import stat
import sys
import tempfile
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, date, datetime, timedelta
from io import BufferedReader, BytesIO
from pathlib import Path
from typing import Any, TypedDict, cast

import numpy as np
import polars as pl

from uba import event_rules as rules
from uba.dates import DateFormError, parse_date
from uba.errors import UserError, first_line
from uba.logs import get_logger
from uba.schema import (
    EVENT_SCHEMA,
    FEEDBACK_SCHEMA,
    PARTITION_COLUMN,
    REQUIRED_FIELDS,
    JsonValue,
    alert_id,
)

EVENTS = "events"
QUARANTINE = "quarantine"
AGGREGATES = "aggregates"
LABELS = "labels"
SCORES = "scores"
FLAGGED = "flagged"
RUNS = "runs"
TMP_PREFIX = ".tmp-"
# Test hooks (never set in production): the write of this kind fails with ENOSPC, as a
# full disk would make it, or the process stops itself (SIGSTOP) just before it, for a test
# to act at that exact point and resume it. Kinds: staged_part, baseline_snapshot,
# aggregates, events, publish, manifest, feedback, table_compaction, table_listing (see fault_point).
FAULT_ENOSPC_ENV = "UBA_FAULT_ENOSPC_AT"
FAULT_STOP_ENV = "UBA_FAULT_STOP_AT"
log = get_logger("io")
# What ``open_input`` returns: the file itself, or a ``.gz`` file's decompressing reader.
InputStream = BufferedReader | gzip.GzipFile


class CorruptPartError(UserError):
    """A stored Parquet part whose bytes are not the ones that were written (or unreadable)."""


def fault_point(kind: str, path: Path | str = "") -> None:
    """Raise ENOSPC here when ``UBA_FAULT_ENOSPC_AT`` names ``kind``, or SIGSTOP this process
    when ``UBA_FAULT_STOP_AT`` does (fault-injection tests; SIGCONT resumes it)."""
    if os.environ.get(FAULT_STOP_ENV) == kind:
        log.warning("fault injection: stopping before the %s write %s (SIGCONT resumes it)", kind, path)
        os.kill(os.getpid(), signal.SIGSTOP)
    if os.environ.get(FAULT_ENOSPC_ENV) == kind:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))


def os_error_reason(exc: BaseException) -> str | None:
    """One line saying why a file operation failed, from an OSError or a Polars/Arrow IO
    error (Polars reports ENOSPC as a ComputeError); None when ``exc`` is neither."""
    if isinstance(exc, OSError) and exc.errno:
        name = errno.errorcode.get(exc.errno, "")
        text = exc.strerror or str(exc)
        # a rename names both paths; the second is the one in the way (a folder where a file goes)
        where = (f" ({exc.filename} -> {exc.filename2})" if exc.filename and exc.filename2
                 else f" ({exc.filename})" if exc.filename else "")
        return f"{text} [{name}]{where}" if name else f"{text}{where}"
    text = str(exc).strip()
    if isinstance(exc, pl.exceptions.PolarsError) and "os error" in text:
        first = text.splitlines()[0]
        return first.rsplit("IO error: ", 1)[-1]
    return None


def partition_dir(root: Path, dataset: str, day: date | str) -> Path:
    """Directory of one Hive partition, e.g. ``root/events/event_date=2026-03-01``."""
    return Path(root) / dataset / f"{PARTITION_COLUMN}={_day_label(day)}"


def partition_files(root: Path, dataset: str, day: date | str) -> list[Path]:
    """Finished Parquet parts of one partition (temporary files are never listed).

    For events and aggregates the listing is checked against the partition's manifest
    (``check_listed_parts``): an extra part, a listed part that is gone or a deleted
    manifest raises CorruptPartError naming the file. A missing partition folder is no
    partition (raw events may be pruned while their aggregates live on).
    """
    folder = partition_dir(root, dataset, day)
    if not folder.is_dir():
        if dataset == EVENTS and os.path.lexists(folder):
            # a link to a volume that is not mounted said "no events partition ... ingest that day first"
            raise CorruptPartError(f"events partition {folder} is not a folder (a file, or a link to nothing: a volume "
                                   "not mounted?): its events cannot be read; mount or restore it, or remove it")
        return []
    if dataset in CHECKSUMMED:
        return _settled_listing(folder)
    return _finished_parts(folder)


LISTING_ATTEMPTS = 5  # reads of a partition's listing and manifest before a mismatch is corruption


def _settled_listing(folder: Path) -> list[Path]:
    """The finished parts of ``folder`` checked against its manifest, both read again when
    they disagree.

    The folder is listed, then the manifest read, without the writers' lock (a reader may
    not be allowed to take it): a part an ingest renamed into place between the two reads
    is listed by the manifest but not by the listing, so a score next to an ingest of the
    same day failed on a healthy partition ("part ... is missing", about one read in 60
    under a busy writer). A writer's step is over within milliseconds; a damaged
    partition reads the same every time, and only then is it refused.
    """
    for attempt in range(1, LISTING_ATTEMPTS):
        try:
            return check_listed_parts(folder, _finished_parts(folder))
        except CorruptPartError:
            time.sleep(0.01 * attempt)
    return check_listed_parts(folder, _finished_parts(folder))


def dated_dirs(base: Path, key: str, finished: Callable[[Path], bool]) -> list[date]:
    """Dates of ``base/<key>=YYYY-MM-DD`` folders that hold finished content, ascending.

    The one walk over dated folders: partitions, run manifests and baseline snapshots
    only differ in the key and in what counts as finished. Other names ('unknown',
    temporary folders) are skipped.
    """
    base = Path(base)
    if not base.is_dir():
        return []
    found = []
    for child in base.iterdir():
        name, _, label = child.name.partition("=")
        if name != key or not child.is_dir():
            continue
        try:
            day = parse_date(label)  # not fromisoformat: `event_date=20260301` is no partition
        except DateFormError:
            continue
        if finished(child):
            found.append(day)
    return sorted(found)


def partition_dates(root: Path, dataset: str) -> list[date]:
    """Dates that have at least one finished part, ascending; 'unknown' is skipped."""
    return dated_dirs(Path(root) / dataset, PARTITION_COLUMN,
                      lambda folder: any(_named_as_part(p) for p in folder.glob("*.parquet")))


def _named_as_part(path: Path) -> bool:
    """Whether ``path`` (a ``*.parquet``) is named as a part: not a temporary, and not
    hidden (``.`` or ``_``, the Hive convention; ``_finished_parts``). A folder holding only
    ``_x.parquet`` is no partition: ``evaluate`` listed it as a day it evaluated."""
    return not path.name.startswith((TMP_PREFIX, ".", "_"))


def parquet_schema(part: Path | str) -> pl.Schema:
    """The schema in the footer of exactly ``part``.

    Every Polars reader here is given ``glob=False``: by default Polars reads a path as a
    glob pattern, so an events part named ``part-[0].parquet`` (a legal file name another
    tool may write) was planned from its own footer but read as ``part-0.parquet``,
    scoring that file's rows twice and its own not at all. ``read_parquet_schema`` has no
    such switch, hence this.
    """
    return pl.scan_parquet(part, glob=False).collect_schema()


def scan_partition(root: Path, dataset: str, day: date | str) -> pl.LazyFrame | None:
    """Lazy scan of one partition's parts, or None when the partition has none."""
    files = partition_files(root, dataset, day)
    if not files:
        return None
    return pl.scan_parquet(files, glob=False)


class UnreadableParquetError(ValueError):
    """pyarrow could not decode a Parquet file (``read_parquet_file``): a damaged footer,
    page header or page."""


# What a whole-file read (``read_parquet_file``) raises for a file it cannot give: every
# reader that names such a file catches these (OSError: the file system's, a file gone or
# not permitted; everything about the bytes is UnreadableParquetError).
UNREADABLE_PARQUET: tuple[type[Exception], ...] = (UnreadableParquetError, OSError)


def read_parquet_file(source: Path | bytes, columns: Sequence[str] | None = None) -> pl.DataFrame:
    """A whole Parquet file (a path, or its bytes already read), or only its ``columns``,
    decoded by pyarrow and checked before Polars takes it.

    Every file a command or the API reads whole comes through here, not through Polars'
    reader: the analysts' tables, the published flagged, user-day and risk tables, baseline
    snapshots, the user directory, labels. On some single flipped bytes in a data page (a
    value count made negative) Polars 2.1 and 2.2 ask for 2**61 bytes and abort the process,
    past any ``except``: one damaged triage part ended ``alerts list``, and one damaged
    risk part the API worker that served it. pyarrow raises on every one-byte change of
    such pages (tests/test_parquet_damage.py). It reads a small file faster (0.55 ms against
    0.69) and a big one slower (a 200,000-user baseline snapshot of 205 MB: 0.31 s against 0.15). What pyarrow lets through and Polars cannot take is refused here too
    (``_read_capped``, ``_check_arrow_values``; the files two attacks found are in
    tests/hostile/parquet/). The day's events and scores, read in bulk by the batch, stay
    Polars scans."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    size = len(source) if isinstance(source, bytes) else os.stat(source).st_size
    try:
        handle = pq.ParquetFile(BytesIO(source) if isinstance(source, bytes) else str(source))
        _refuse_wide_fixed_values(handle.schema, columns)
        table = _read_capped(handle, columns, _decoded_cap(size))
        _check_arrow_values(table)
        frame = pl.from_arrow(table)
    except OSError as exc:
        if exc.errno is not None:  # the file system's: a file gone (a merged table part), no permission
            raise
        raise UnreadableParquetError(first_line(exc).rstrip(".")) from exc  # pyarrow's decode errors
    # ValueError: a name in the footer that is not UTF-8 (pyarrow's UnicodeDecodeError), a
    # date out of Python's range; a Rust panic in from_arrow (a metadata key that is not
    # UTF-8, a decimal256 column) is a BaseException no caller's ``except`` would catch
    except (pa.ArrowException, ValueError, pl.exceptions.PolarsError, pl.exceptions.PanicException) as exc:
        raise UnreadableParquetError(first_line(exc).rstrip(".")) from exc  # a sentence goes on after it
    assert isinstance(frame, pl.DataFrame)  # a Table makes a frame (a Series comes from an Array)
    return frame


def polars_import_problem(kind: Any) -> str | None:
    """Why Polars cannot take an Arrow type (None when it can), checked before any value is
    converted: Polars panics (printing a Rust backtrace) on Int256 decimals and intervals,
    and refuses a time zone it does not know only when the column is converted."""
    import pyarrow as pa

    types = pa.types
    if types.is_decimal256(kind):
        return "a 256-bit decimal (store it as decimal128 with precision <= 38, or double)"
    if types.is_timestamp(kind) and kind.tz is not None:
        try:
            pl.Series([], dtype=pl.Int64).cast(pl.Datetime(kind.unit, kind.tz))
        except (pl.exceptions.PolarsError, ValueError):
            return f"a timestamp in the unknown time zone {str(kind.tz)[:80]!r}"
        return None
    if types.is_list(kind) or types.is_large_list(kind) or types.is_fixed_size_list(kind):
        return polars_import_problem(kind.value_type)
    if types.is_struct(kind):
        return next((why for index in range(kind.num_fields)
                     if (why := polars_import_problem(kind.field(index).type))), None)
    if types.is_dictionary(kind):
        return polars_import_problem(kind.value_type)
    plain = (types.is_null, types.is_boolean, types.is_integer, types.is_floating, types.is_string,
             types.is_large_string, types.is_binary, types.is_large_binary, types.is_fixed_size_binary,
             types.is_date, types.is_time, types.is_timestamp, types.is_duration, types.is_decimal128,
             types.is_string_view, types.is_binary_view)
    return None if any(test(kind) for test in plain) else "a type Polars cannot read"


# A whole-file read stops once what it decoded passes this many times the file's size (at
# least _DECODED_FLOOR): the files read whole hold distinct ids and numbers, a few times
# their encoded size, while one 518-byte file (a dictionary of one 8 MiB string, 256 rows)
# decodes to 2 GiB. Checked between batches of _BATCH_ROWS rows (what one batch decodes
# is the most a file can take past the cap).
_DECODED_RATIO = 1000
_DECODED_FLOOR = 256 << 20
_BATCH_ROWS = 8_192
_MAX_FIXED_WIDTH = 1 << 10
_BATCH_FIXED_BYTES = 16 << 20


def _decoded_cap(size: int) -> int:
    return max(_DECODED_RATIO * size, _DECODED_FLOOR)


def _read_capped(handle: Any, columns: Sequence[str] | None, cap: int) -> Any:  # pyarrow ParquetFile -> Table
    """The file in batches, refused once they pass ``cap`` bytes. ``ParquetFile.read``
    sizes its buffers by the footer's row counts: a row group saying it holds 2**40 rows
    took 10 GiB in 1.5 s; batch by batch the read stops where the pages do. The footer's
    column entries are never opened here: pyarrow's accessor for one whose physical type
    was damaged throws a C++ exception that aborts the process."""
    import pyarrow as pa

    batches, decoded = [], 0
    rows = _rows_per_batch(handle.schema_arrow, columns)
    for batch in handle.iter_batches(batch_size=rows, columns=None if columns is None else list(columns)):
        decoded += batch.nbytes
        if decoded > cap:
            raise ValueError(f"it decodes to more than {cap >> 20} MiB ({_DECODED_RATIO} times its size at most)")
        batches.append(batch)
    if batches:
        return pa.Table.from_batches(batches)
    schema = handle.schema_arrow
    return (schema if columns is None else pa.schema([schema.field(c) for c in columns])).empty_table()


def _rows_per_batch(schema: Any, columns: Sequence[str] | None) -> int:  # a pyarrow Schema
    """_BATCH_ROWS, fewer where the columns read hold fixed-size lists: a 19 kB file of one
    ``fixed_size_list<uint8>`` of 8 Mi zero bytes per row decoded 2 GiB per 256-row batch
    (18.8 GiB at peak, 48 s) before it failed; batches of about _BATCH_FIXED_BYTES of
    fixed-size values keep one batch's overshoot small. A variable-length list counts as
    one item: what one row of it holds is bounded by nothing a batch size can set."""
    read = [field for field in schema if columns is None
            or any(name == field.name or name.startswith(field.name + ".") for name in columns)]
    row_bytes = sum(_row_bytes(field.type) for field in read)
    return min(_BATCH_ROWS, max(1, _BATCH_FIXED_BYTES // row_bytes)) if row_bytes else _BATCH_ROWS


def _row_bytes(kind: Any) -> int:  # a pyarrow DataType
    """Bytes one row of ``kind`` decodes to, counting text and variable lists as one 8-byte item."""
    import pyarrow as pa

    types = pa.types
    if isinstance(kind, pa.BaseExtensionType):
        return _row_bytes(kind.storage_type)
    if types.is_fixed_size_list(kind):
        return int(kind.list_size) * _row_bytes(kind.value_type)
    if types.is_list(kind) or types.is_large_list(kind) or types.is_dictionary(kind):
        return 8 + _row_bytes(kind.value_type)
    if types.is_map(kind):
        return 8 + _row_bytes(kind.key_type) + _row_bytes(kind.item_type)
    if types.is_struct(kind):
        return 1 + sum(_row_bytes(kind.field(index).type) for index in range(kind.num_fields))
    if types.is_null(kind):
        return 0
    try:
        return max(1, int(kind.bit_width) // 8)
    except ValueError:  # no fixed width: text and binary, one offset per row
        return 8


def _refuse_wide_fixed_values(leaves: Any, columns: Sequence[str] | None) -> None:  # a pyarrow ParquetSchema
    """Refuse fixed-length byte arrays wider than _MAX_FIXED_WIDTH in the columns read, from
    the Parquet leaves (an Arrow decimal or extension type can hide the width), before a page
    is read: nothing the product reads holds one, and pyarrow decodes a whole dictionary page
    of them at once (a 513-byte file of one 8 MiB value on 256 rows asked for 2 GiB,
    whatever the batch size). The schema's leaves are safe to open; see ``_read_capped``."""
    for index in range(len(leaves)):
        leaf = leaves.column(index)
        read = columns is None or any(leaf.path == name or leaf.path.startswith(name + ".") for name in columns)
        if read and leaf.physical_type == "FIXED_LEN_BYTE_ARRAY" and leaf.length > _MAX_FIXED_WIDTH:
            raise ValueError(f"column {leaf.path} holds fixed-size binary values of {leaf.length:,} bytes "
                             f"(at most {_MAX_FIXED_WIDTH:,} are read)")


# Python's dates: a stored date outside them reads, but Polars then panics or raises
# turning it into a Python value (``to_dicts``, a JSON answer).
_PYTHON_DAYS = (date.min - date(1970, 1, 1)).days, (date.max - date(1970, 1, 1)).days
_TIMESTAMP_PER_DAY = {"s": 86_400, "ms": 86_400_000, "us": 86_400_000_000, "ns": 86_400_000_000_000}


def _check_arrow_values(table: Any) -> None:  # a pyarrow Table (untyped)
    """Refuse what pyarrow decodes without checking and Polars cannot take: a string that is
    not UTF-8 (Polars keeps it, then crashes the process printing it: SIGSEGV), metadata
    that is not UTF-8 and types Polars has no counterpart for (a panic in ``from_arrow``),
    and a date, timestamp or duration Python cannot hold (a panic turning it into one)."""
    table.validate(full=True)  # ArrowInvalid naming the column: "Invalid UTF8 sequence"
    _check_metadata_text(table.schema)
    for field, column in zip(table.schema, table.columns, strict=True):
        why = polars_import_problem(field.type)
        if why is not None:
            raise ValueError(f"column {field.name} is {field.type}, {why}")
        _check_temporal_range(field.name, column)


def _check_metadata_text(schema: Any) -> None:  # a pyarrow Schema (untyped)
    """Polars panics (a Rust backtrace, then a BaseException) importing a schema whose
    metadata, or a field's, holds a key or value that is not UTF-8; and using a frame whose
    nested field carries an extension type (a ``polars.enum`` list item: writing it panicked)."""
    _check_text_of("the file", schema.metadata)
    for field in schema:
        _check_text_of(f"column {field.name}", field.metadata)
        _check_nested_fields(field.name, field.type)


def _check_text_of(owner: str, metadata: dict[bytes, bytes] | None) -> None:
    for text in (metadata or {}).items():
        for raw in text:
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError:
                raise ValueError(f"the metadata of {owner} is not UTF-8 text") from None


def _check_nested_fields(name: str, kind: Any) -> None:  # a pyarrow DataType
    """The fields inside ``kind`` (list items, struct children, map keys and items)."""
    import pyarrow as pa

    if pa.types.is_struct(kind):
        children = [kind.field(i) for i in range(kind.num_fields)]
    elif pa.types.is_map(kind):
        children = [kind.key_field, kind.item_field]
    elif pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind):
        children = [kind.value_field]
    else:
        return
    for child in children:
        where = f"{name}.{child.name}"
        _check_text_of(f"column {where}", child.metadata)
        if child.metadata and b"ARROW:extension:name" in child.metadata:
            raise ValueError(f"column {where} carries an extension type, which nothing here writes")
        _check_nested_fields(where, child.type)


def _check_temporal_range(name: str, values: Any) -> None:
    """Dates, timestamps and durations of ``values`` (a pyarrow array; inside lists and
    structs too)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    kind = values.type
    if pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind):
        chunks = values.chunks if isinstance(values, pa.ChunkedArray) else [values]
        for chunk in chunks:
            _check_temporal_range(name, pc.list_flatten(chunk))
        return
    if pa.types.is_struct(kind):
        chunks = values.chunks if isinstance(values, pa.ChunkedArray) else [values]
        for chunk in chunks:
            for i in range(kind.num_fields):
                _check_temporal_range(f"{name}.{kind.field(i).name}", chunk.field(i))
        return
    if pa.types.is_date32(kind):
        low, high = _PYTHON_DAYS
    elif pa.types.is_timestamp(kind):
        low, high = (day * _TIMESTAMP_PER_DAY[kind.unit] for day in _PYTHON_DAYS)
    elif pa.types.is_duration(kind):  # Python's timedelta: 999,999,999 days either way
        low, high = (day * _TIMESTAMP_PER_DAY[kind.unit] for day in (-timedelta.max.days, timedelta.max.days))
    else:
        return
    raw = pc.min_max(values.cast(pa.int32() if pa.types.is_date32(kind) else pa.int64()))
    least, most = raw["min"].as_py(), raw["max"].as_py()
    if least is not None and (least < low or most > high):
        raise ValueError(f"column {name} holds a {kind} outside what Python's dates and times hold "
                         "(years 1-9999, 999,999,999 days)")


def read_partition(root: Path, dataset: str, day: date | str, remedy: str = "") -> pl.DataFrame | None:
    """A small published table of one day whole (``read_parquet_file`` each part), or None
    when the partition has none. A part that does not decode, or parts whose columns differ,
    are a CorruptPartError naming the part (or the folder) and ``remedy``."""
    frames = []
    for part in partition_files(root, dataset, day):
        try:
            frames.append(read_parquet_file(part))
        except UNREADABLE_PARQUET as exc:
            raise unreadable_part(part, exc, remedy) from exc
    if len(frames) < 2:
        return frames[0] if frames else None
    try:
        return pl.concat(frames, how="vertical")
    except pl.exceptions.PolarsError as exc:
        raise CorruptPartError(f"the {dataset} table of {_day_label(day)} under {partition_dir(root, dataset, day)} does "
                               f"not read as one ({first_line(exc)})" + (f"; {remedy}" if remedy else "")) from exc


def scan_events(data_dir: Path, day: date) -> pl.LazyFrame:
    """Validated events of one day, in the stored schema, hour and weekday taken from the
    timestamp (``_clock_fields_of_the_timestamp``); a missing day is a user error.

    Each part is scanned on its own and brought to ``EVENT_SCHEMA`` (``conform_events``)
    before the parts are joined: one scan over parts whose column types differ (a
    timestamp in ns in one, us in the other) fails in the engine with no file named.
    """
    files = partition_files(data_dir, EVENTS, day)
    if not files:
        raise UserError(
            f"no events partition for {day.isoformat()} under {Path(data_dir) / EVENTS} "
            "(ingest or generate that day first)"
        )
    scans = [conform_events(pl.scan_parquet(part, glob=False), _check_event_part(part), part) for part in files]
    events = pl.concat(scans, how="vertical") if len(scans) > 1 else scans[0]
    return events.with_columns(_clock_fields_of_the_timestamp())


def _clock_fields_of_the_timestamp() -> list[pl.Expr]:
    """``hour_of_day`` and ``day_of_week`` as the timestamp gives them (``event_rules.clock_fields``):
    what ingest stores, so an ingested day reads unchanged, while another tool's part whose
    stored hour disagrees (a writer's local hours) cannot teach the aggregates, training or
    evaluation a forged hour. Scoring refuses such a part instead (``read_event_piece``):
    there the run names it, here a lookback day would otherwise skew a baseline unseen."""
    return [value.cast(EVENT_SCHEMA[name]).alias(name)
            for name, value in rules.clock_fields(pl.col("timestamp")).items()]


def _check_event_part(part: Path) -> pl.Schema:
    """Refuse a truncated or foreign part up front, naming it, rather than failing mid-query;
    returns its schema.

    Reading a Parquet footer costs microseconds; a corrupt part found by the engine
    later surfaces as an internal error without the file's name.
    """
    try:
        schema = parquet_schema(part)
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise CorruptPartError(f"events part {part} is not a readable Parquet file: {exc}") from exc
    missing = [name for name in EVENT_SCHEMA if name not in schema]
    if missing:
        raise UserError(f"events part {part} lacks columns {missing}: it was not written by ingest")
    for name in EVENT_SCHEMA:
        _stored_as_event_type(name, schema[name], part)  # a type no field can be read from: named now
    return pl.Schema(schema)


def conform_events(lf: pl.LazyFrame, stored: pl.Schema, part: Path | str) -> pl.LazyFrame:
    """One part's events as ``EVENT_SCHEMA`` (its columns, in its order, with its types).

    Ingest writes that schema, but the storage contract is Hive-style Parquet that other
    writers (pyarrow, Polars, Spark) may produce for the same events: strings stored
    dictionary-encoded (read as Categorical), timestamps in ns or ms, zoned or naive
    (naive means UTC, as in the event contract), narrower integers or float32. Without
    this a Categorical ``user_id`` failed the baseline join and a ns timestamp was
    published as ns, so the day's outputs depended on how its input was written.
    ``stored`` is the part's schema (``_check_event_part``); a column of a type no
    event field can be read from raises UserError naming the file, field and type.
    """
    return lf.select([_stored_as_event_type(name, stored[name], part) for name in EVENT_SCHEMA])


_TEXT_TYPES = (pl.String, pl.Categorical, pl.Enum)


def _stored_as_event_type(name: str, stored: pl.DataType, part: Path | str) -> pl.Expr:
    """The stored column ``name`` cast to its ``EVENT_SCHEMA`` type, when that loses nothing
    but sub-microsecond time (the contract's timestamps have at most milliseconds)."""
    target = EVENT_SCHEMA[name]
    col = pl.col(name)
    if stored == target:
        return col
    if isinstance(stored, pl.Null) or (target == pl.String and isinstance(stored, _TEXT_TYPES)):
        return col.cast(target)
    if isinstance(target, pl.Datetime) and isinstance(stored, pl.Datetime):
        utc = col.dt.convert_time_zone("UTC") if stored.time_zone else col.dt.replace_time_zone("UTC")
        return utc.dt.cast_time_unit(target.time_unit)
    if (target.is_integer() and stored.is_integer()) or (target.is_float() and stored.is_numeric()):
        return col.cast(target)  # strict: a value the stored type holds but the field cannot fails
    raise UserError(f"events part {part}: field {name} is stored as {stored}, which cannot be read as "
                    f"{target}: it was not written as the events contract says (docs/batch-scoring.md)")


def scan_partitions(root: Path, dataset: str, days: Iterable[date]) -> pl.LazyFrame | None:
    """Lazy scan over the parts of several partitions (missing days are skipped)."""
    files = [f for day in days for f in partition_files(root, dataset, day)]
    if not files:
        return None
    return pl.scan_parquet(files, glob=False)


def _tmp_path(folder: Path, suffix: str) -> Path:
    return folder / f"{TMP_PREFIX}{uuid.uuid4().hex}{suffix}"


def fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` survive a power cut, not only a process crash."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


DISK_FULL_BYTES = 1 << 20


def disk_full(folder: Path) -> bool:
    """True when the filesystem of ``folder`` has less than 1 MiB left (a failed write's likely cause)."""
    try:
        info = os.statvfs(folder)
    except OSError:
        return False
    return info.f_bavail * info.f_frsize < DISK_FULL_BYTES


def _fill(tmp: Path, write: Callable[[Path], object], path: Path, durable: bool) -> None:
    """Run ``write`` into ``tmp`` (fsynced when ``durable``); a full disk is reported as ENOSPC."""
    try:
        write(tmp)
    except Exception as exc:
        # Polars 2.1 reports a full disk as "Invalid thrift: transport error", without the
        # OS error: ask the filesystem, with the partial file still holding its space.
        if not isinstance(exc, OSError) and disk_full(path.parent):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path)) from exc
        if isinstance(exc, OSError) and not exc.errno:
            raise with_os_errno(exc, tmp) from exc
        raise
    if durable:
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())


_POLARS_OS_ERROR = re.compile(r"\(os error (\d+)\)")


def with_os_errno(exc: OSError, path: Path) -> OSError:
    """``exc`` with its errno and ``path``, when Polars left them out: it raises a file it
    may not write (an immutable or read-only table folder) as a PermissionError without
    errno ("Operation not permitted (os error 1): <path>"), which the CLI's one-line net
    for filesystem refusals took for a bug and printed as a traceback (found by an attack)."""
    found = _POLARS_OS_ERROR.search(str(exc))
    if found is None:
        return exc
    code = int(found.group(1))
    return OSError(code, os.strerror(code), str(path))


def _write_atomic(path: Path, write: Callable[[Path], object], durable: bool = False,
                  make_parent: bool = True) -> Path:
    """The one write-then-rename routine: ``write`` fills a temporary file beside ``path``.

    ``durable`` adds the fsyncs that make the rename survive a power cut (data parts);
    exports and reports only need readers never to see half a file. ``make_parent``
    False makes a missing folder an error instead of creating it (see write_staged_part).
    Parts of events and aggregates partitions go through ``_write_listed_part`` instead,
    which also lists them in their partition's manifest.
    """
    path = Path(path)
    if make_parent:
        path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_path(path.parent, path.suffix)
    try:
        _fill(tmp, write, path, durable)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    if durable:
        fsync_dir(path.parent)
    return path


def _parquet_writer(df: pl.DataFrame, metadata: dict[str, str] | None = None) -> Callable[[Path], None]:
    return lambda tmp: df.write_parquet(tmp, compression="zstd", statistics=True, metadata=metadata)


def parquet_bytes(df: pl.DataFrame) -> bytes:
    """``df`` encoded as ``_parquet_writer`` writes it (the same bytes), in memory: encoded
    in a thread while other work runs, and written later in one go (``write_baseline_snapshot``)."""
    buffer = BytesIO()
    df.write_parquet(buffer, compression="zstd", statistics=True)
    return buffer.getvalue()


def _is_listed_partition(folder: Path) -> bool:
    """``folder`` is a partition of events or aggregates (``<root>/<dataset>/event_date=*``)."""
    return folder.parent.name in CHECKSUMMED and folder.name.startswith(f"{PARTITION_COLUMN}=")


def write_parquet_atomic(df: pl.DataFrame, path: Path, metadata: dict[str, str] | None = None) -> Path:
    """Write ``df`` to ``path`` via a temporary file and rename, so the part is whole or absent.

    A part of an events or aggregates partition (``<dataset>/event_date=*/``) is also
    listed, with its sha256, in the partition's manifest (``_write_listed_part``).
    ``metadata``: Parquet key-value metadata (a merged table part names what it replaces).
    """
    path = Path(path)
    if _is_listed_partition(path.parent):
        return _write_listed_part(path, _parquet_writer(df))
    return _write_atomic(path, _parquet_writer(df, metadata), durable=True)


def write_staged_part(df: pl.DataFrame, path: Path) -> Path:
    """Write a shard's part into a staging folder that must already exist.

    The driver creates a run's staging folders and removes them when the run ends; a
    shard task orphaned by a killed driver must then fail, not re-create the folder of a
    run that no longer exists.
    """
    fault_point("staged_part", path)
    return _write_atomic(path, _parquet_writer(df), durable=True, make_parent=False)


def write_part(df: pl.DataFrame, root: Path, dataset: str, day: date | str, name: str | None = None) -> Path:
    """Add one part to a partition; ``name`` makes the write deterministic (e.g. a content hash).

    Parts of events and aggregates are listed with their sha256 in the partition's
    manifest (``_write_listed_part``); concurrent writers of one partition take turns.
    """
    part = name or f"part-{uuid.uuid4().hex}"
    path = partition_dir(root, dataset, day) / f"{part}.parquet"
    if dataset == EVENTS:
        fault_point("events", path)
    return write_parquet_atomic(df, path)


def remove_part(path: Path) -> None:
    """Delete a part written by ``write_part`` (a failed batch) and its manifest entry."""
    path = Path(path)
    if _is_listed_partition(path.parent):
        _remove_listed_part(path)
    else:
        path.unlink(missing_ok=True)
    checksum_path(path).unlink(missing_ok=True)


# --- stored-data integrity (hardening): a manifest per events and aggregates partition ---
#
#   <data-dir>/.checksums/<dataset>/event_date=D/manifest.json   every part of the partition
#                                                                 with its sha256 and size
#   <data-dir>/.checksums/<dataset>/event_date=D/.lock           writers of the partition take turns
#   <data-dir>/.part-manifests.json                              manifests are in use here, and which
#                                                                 partitions were written before them
#
# Readers check the partition against its manifest: a part the manifest does not list
# (added later), a listed part that is gone, or a part whose bytes differ fails the read
# with one line naming the file. A partition without a manifest is read as before
# (per-part records ``<part>.json`` where they exist, else unverified) only if the marker
# lists it as written before manifests; once the marker exists, any other partition
# without a manifest had one deleted. The marker itself is created (listing the
# partitions then present without a manifest) before the first manifest is written, so
# deleting it while manifests exist is detected too.
#
# A writer lists a new part as ``pending`` before renaming it into place, then moves it
# to ``parts``. Readers take a pending entry whose part is present as listed and skip one
# whose part is absent (a write in flight, or one a crash cut short), so concurrent
# readers need no lock and a crash never leaves a partition unreadable.

CHECKSUMS = ".checksums"
CHECKSUMMED = frozenset({EVENTS, AGGREGATES})
PART_MANIFEST_NAME = "manifest.json"
PART_MANIFESTS_MARKER = ".part-manifests.json"
PART_MANIFEST_FORMAT = 1
_LOCK_NAME = ".lock"
_VERIFIED: dict[tuple[str, int, int, int, int], str] = {}
_VERIFIED_MAX = 50_000


def checksum_folder(partition: Path) -> Path:
    """``root/.checksums/<dataset>/<partition>`` for the partition folder ``root/<dataset>/<partition>``.

    Outside the dataset folders: Polars' directory scan (``scan_parquet('events/')``) reads
    every file below the folder, hidden ones included, and refuses mixed extensions.
    """
    partition = Path(partition)
    return partition.parents[1] / CHECKSUMS / partition.parent.name / partition.name


def part_manifests_marker(root: Path) -> Path:
    """``<data-dir>/.part-manifests.json``: partition manifests are in use in this data directory."""
    return Path(root) / PART_MANIFESTS_MARKER


def checksum_path(part: Path) -> Path:
    """The per-part record of the format before manifests:
    ``root/.checksums/<dataset>/<partition>/<name>.json`` (read for partitions written then)."""
    part = Path(part)
    return checksum_folder(part.parent) / f"{part.name}.json"


class _PartEntry(TypedDict, total=False):
    """A part's entry in a partition manifest (or its per-part record before manifests):
    ``sha256`` and ``size`` are None for a part adopted without a known checksum."""

    sha256: str | None
    size: int | None


class _PartList(TypedDict):
    """A partition manifest as writers keep it; the file adds format, dataset and partition."""

    parts: dict[str, _PartEntry]
    pending: dict[str, _PartEntry]


class _Marker(TypedDict):
    """``.part-manifests.json``: the partitions written before manifests, per dataset."""

    format: int
    created_at: str
    legacy: dict[str, list[str]]


def _recorded_checksum(part: Path) -> _PartEntry | None:
    try:
        record = json.loads(checksum_path(part).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise CorruptPartError(f"the checksum record of {part} is unreadable ({checksum_path(part)}: "
                               f"{exc}); the part cannot be verified") from exc
    if not isinstance(record, dict) or not isinstance(record.get("sha256"), str):
        raise CorruptPartError(f"the checksum record of {part} is malformed ({checksum_path(part)})")
    return cast(_PartEntry, record)


def _finished_parts(folder: Path) -> list[Path]:
    """The finished parts of a partition folder (temporary files left out).

    An entry named like a part that is not a regular file (a FIFO, a device, a folder, a
    dangling link) is refused naming it: opening a FIFO waits for a writer, so a FIFO
    in a partition read without a manifest hung ``verify``, ``score`` and ``ingest`` of
    that day for good. Names starting with ``.`` or ``_`` are not parts, by the Hive
    convention Spark and pyarrow's dataset reader follow (``_SUCCESS``, ``.part.crc``, a
    writer's hidden temporary): Polars alone would read ``_x.parquet``, and a day adopted
    from another tool's output was then counted twice."""
    # listed, not globbed: glob reads a folder the process may not list as empty, so an
    # events partition owned by another user was "missing its parts" (restore or re-ingest)
    parts = sorted(p for p in (folder / name for name in os.listdir(folder))
                   if p.suffix == ".parquet" and _named_as_part(p))
    for part in parts:
        if not part.is_file():
            raise CorruptPartError(f"{_kind(part)} part {part} is not a regular file (a FIFO, device, folder "
                                   "or dangling link named like a part): reading it could block or fail; "
                                   "remove it")
    return parts


def _remedy(folder: Path) -> str:
    return AGGREGATES_REMEDY if folder.parent.name == AGGREGATES else EVENTS_REMEDY


def _valid_entries(entries: object) -> bool:
    return isinstance(entries, dict) and all(
        isinstance(name, str) and isinstance(entry, dict)
        and (entry.get("sha256") is None or isinstance(entry.get("sha256"), str))
        and (entry.get("size") is None or isinstance(entry.get("size"), int))
        for name, entry in entries.items())


def _read_part_manifest(folder: Path) -> _PartList | None:
    """The manifest of the partition ``folder``, None when it has none; unreadable = CorruptPartError."""
    path = checksum_folder(folder) / PART_MANIFEST_NAME
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else "not JSON"
        raise CorruptPartError(f"the checksum manifest {path} of {folder} is unreadable ({reason}): its parts "
                               f"cannot be verified; {_remedy(folder)}") from exc
    if not (isinstance(data, dict) and _valid_entries(data.get("parts"))
            and _valid_entries(data.get("pending", {}))):
        raise CorruptPartError(f"the checksum manifest {path} of {folder} is malformed: its parts cannot be "
                               f"verified; {_remedy(folder)}")
    folder = Path(folder)
    recorded = (data.get("dataset"), data.get("partition"))
    if recorded != (folder.parent.name, folder.name):
        raise CorruptPartError(f"the checksum manifest {path} was written for {recorded[0]}/{recorded[1]}, not "
                               f"{folder.parent.name}/{folder.name} (copied from another partition): its parts "
                               f"cannot be verified; {_remedy(folder)}")
    data.setdefault("pending", {})
    return cast(_PartList, data)


def _read_marker(root: Path) -> _Marker | None:
    path = part_manifests_marker(root)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise CorruptPartError(f"{path} is unreadable: partitions without a manifest cannot be told from "
                               "partitions written before manifests; restore it from a backup") from exc
    legacy = data.get("legacy") if isinstance(data, dict) else None
    if not (isinstance(legacy, dict) and all(isinstance(v, list) for v in legacy.values())):
        raise CorruptPartError(f"{path} is malformed: partitions without a manifest cannot be told from "
                               "partitions written before manifests; restore it from a backup")
    return cast(_Marker, data)


def _any_part_manifest(root: Path) -> Path | None:
    """A partition manifest somewhere under ``root/.checksums`` (None when there is none)."""
    for dataset in sorted(CHECKSUMMED):
        base = Path(root) / CHECKSUMS / dataset
        if base.is_dir():
            for child in sorted(base.iterdir()):
                if (child / PART_MANIFEST_NAME).is_file():
                    return child / PART_MANIFEST_NAME
    return None


def _governing_manifest(folder: Path, has_parts: bool) -> _PartList | None:
    """The manifest the partition ``folder`` is checked against; None: read as before manifests.

    None only for a partition the marker lists as written before manifests, or for any
    partition of a data directory where manifests were never written. A partition with
    parts and no manifest otherwise had it deleted: CorruptPartError naming the file.
    """
    manifest = _read_part_manifest(folder)
    if manifest is not None or not has_parts:
        return manifest
    root = folder.parents[1]
    marker = _read_marker(root)
    path = checksum_folder(folder) / PART_MANIFEST_NAME
    if marker is None:
        found = _any_part_manifest(root)
        if found is None:
            return None  # manifests never written here: every partition is read as before
        raise CorruptPartError(f"{part_manifests_marker(root)} is missing although partitions of {root} have "
                               f"checksum manifests (e.g. {found}): a partition without one cannot be told "
                               "from one written before manifests; restore the file from a backup")
    label = folder.name.partition("=")[2]
    if label in marker["legacy"].get(folder.parent.name, []):
        return None
    raise CorruptPartError(f"the checksum manifest {path} of {folder} is missing (the partition was written "
                           f"with one): its parts cannot be verified; {_remedy(folder)}")


def _listed_entry(manifest: _PartList, name: str) -> _PartEntry | None:
    return manifest["parts"].get(name) or manifest["pending"].get(name)


def check_listed_parts(folder: Path, found: list[Path]) -> list[Path]:
    """``found`` (the finished parts of the partition ``folder``) checked against its manifest.

    A part the manifest does not list, or a listed part that is gone, raises
    CorruptPartError naming the file. Pending entries (a write in flight or cut short)
    count when their part is present and are skipped when it is not.
    """
    manifest = _governing_manifest(folder, bool(found))
    if manifest is None:
        return found
    path = checksum_folder(folder) / PART_MANIFEST_NAME
    for part in found:
        if _listed_entry(manifest, part.name) is None:
            raise CorruptPartError(f"{_kind(part)} part {part} is not in the checksum manifest {path}: it was "
                                   f"added after the partition was written; remove it, or {_remedy(folder)}")
    names = {part.name for part in found}
    gone = sorted(name for name in manifest["parts"] if name not in names)
    if gone:
        more = f" (and {len(gone) - 1} more)" if len(gone) > 1 else ""
        raise CorruptPartError(f"{_kind(folder / gone[0])} part {folder / gone[0]}{more} is missing: the checksum "
                               f"manifest {path} lists it; {_remedy(folder)}")
    return found


def _sha256_cached(part: Path, info: os.stat_result) -> str:
    """sha256 of ``part``, hashed once per process for one (inode, size, mtime)."""
    key = (str(part), info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns)
    digest = _VERIFIED.get(key)
    if digest is None:
        digest = file_sha256(part)
        if len(_VERIFIED) >= _VERIFIED_MAX:
            _VERIFIED.clear()
        _VERIFIED[key] = digest
    return digest


def verify_part(part: Path, remedy: str = "") -> bool:
    """Check a stored part against the sha256 its partition's manifest lists for it.

    Returns True when it matched, False when no sha256 is known for it (a partition
    written before checksums, read as before). A mismatch (a flipped byte, a truncated or
    replaced file), a part the manifest does not list, or a missing manifest raises
    CorruptPartError naming the file, in one line. Hashes once per process per (inode,
    size, mtime), so a worker reading several pieces of one file, or the aggregates of
    the same days again, pays once.
    """
    part = Path(part)
    manifest = _governing_manifest(part.parent, True)
    if manifest is None:
        record = _recorded_checksum(part)  # a partition written before manifests
    else:
        record = _listed_entry(manifest, part.name)
        if record is None:
            raise CorruptPartError(f"{_kind(part)} part {part} is not in the checksum manifest "
                                   f"{checksum_folder(part.parent) / PART_MANIFEST_NAME}: it was added after the "
                                   f"partition was written; remove it, or {_remedy(part.parent)}")
    sha256 = record.get("sha256") if record is not None else None
    if record is None or sha256 is None:
        return False
    try:
        info = part.stat()
    except OSError as exc:
        raise CorruptPartError(f"{_kind(part)} part {part} cannot be read: {exc.strerror or exc}") from exc
    hint = f"; {remedy}" if remedy else ""
    size = record.get("size")
    if size is not None and info.st_size != size:
        raise CorruptPartError(f"{_kind(part)} part {part} is corrupt: {info.st_size} bytes, "
                               f"{size} were written (truncated or replaced){hint}")
    digest = _sha256_cached(part, info)
    if digest != sha256:
        raise CorruptPartError(f"{_kind(part)} part {part} is corrupt: its sha256 {digest[:16]}... is not "
                               f"the {sha256[:16]}... recorded when it was written{hint}")
    return True


def listed_parts_problem(folder: Path, listed: dict[str, str], listing: str) -> str | None:
    """What is wrong with the parts of the partition ``folder`` against ``listed`` (part
    name -> sha256, from ``listing``, e.g. a run manifest), or None when every part is
    listed with its bytes and every listed part is there: a part added, one gone, or other
    bytes. A part that cannot be opened (permissions) is no damage: CorruptPartError
    saying so, which the caller's remedy (re-score, restore) would not repair."""
    parts = _finished_parts(folder) if folder.is_dir() else []
    names = {part.name for part in parts}
    for part in parts:
        if part.name not in listed:
            return f"{_kind(part)} part {part} is not in {listing}: it was added after the day was published"
        try:
            digest = _sha256_cached(part, part.stat())
        except OSError as exc:
            raise CorruptPartError(f"{_kind(part)} part {part} cannot be read: {exc.strerror or exc}") from exc
        if digest != listed[part.name]:
            return (f"{_kind(part)} part {part} is corrupt: its sha256 {digest[:16]}... is not the "
                    f"{listed[part.name][:16]}... {listing} records")
    missing = sorted(set(listed) - names)
    if missing:
        return f"{_kind(folder / missing[0])} part {folder / missing[0]} listed in {listing} is missing"
    return None


def part_intact(part: Path) -> bool:
    """True when ``part`` matches its manifest entry, or (no sha256 known) its Parquet footer reads."""
    try:
        if verify_part(part):
            return True
        parquet_schema(part)
    except (CorruptPartError, pl.exceptions.PolarsError, OSError):
        return False
    return True


def verify_partition(root: Path, dataset: str, day: date | str, remedy: str = "") -> None:
    """``verify_part`` on every part of one partition (``partition_files`` checks the listing)."""
    for part in partition_files(root, dataset, day):
        verify_part(part, remedy)


def unverified_partitions(root: Path, dataset: str, days: Iterable[date | str]) -> list[str]:
    """The partitions of ``days`` that are read unverified: some part has no known sha256.

    That is a partition without a manifest that predates manifests (listed in the
    marker), every partition of a data directory with parts but neither marker nor any
    manifest (they may also have been deleted: nothing here can tell), or a manifest
    entry adopted without a sha256. No hashing: names only (``dataset/event_date=D``).
    A deleted manifest still raises CorruptPartError, as on read.
    """
    found = []
    for day in days:
        folder = partition_dir(root, dataset, day)
        parts = _finished_parts(folder) if folder.is_dir() else []
        if not parts:
            continue
        manifest = _governing_manifest(folder, True)
        if manifest is None:
            known = all(_recorded_checksum(part) is not None for part in parts)
        else:
            known = all((_listed_entry(manifest, part.name) or {"sha256": "?"}).get("sha256") for part in parts)
        if not known:
            found.append(f"{dataset}/{folder.name}")
    return found


def verify_data_dir(root: Path) -> dict[str, list[str]]:
    """Check every events and aggregates partition of ``root`` in full (listing, sha256 of
    every part, and the Parquet footer of parts without a known sha256).

    Returns ``verified`` and ``unverified`` partition names (``dataset/event_date=D``) and
    ``corrupt``: one line per partition that failed, naming the file.
    """
    if not Path(root).is_dir():  # a mistyped --data-dir "verified" nothing and exited 0
        raise UserError(f"data directory {root} does not exist or is not a folder: nothing to verify")
    report: dict[str, list[str]] = {"verified": [], "unverified": [], "corrupt": []}
    for dataset in sorted(CHECKSUMMED):
        base = Path(root) / dataset
        for folder in sorted(base.iterdir()) if base.is_dir() else []:
            if not _is_listed_partition(folder):
                continue
            if not folder.is_dir():  # skipped, it passed while score failed on it
                report["corrupt"].append(f"{dataset} partition {folder} is not a folder (a file, or a link to "
                                         "nothing: a volume not mounted?)")
                continue
            try:
                parts = partition_files(root, dataset, folder.name.partition("=")[2])
                known = [verify_part(part) for part in parts]
                for part, checked in zip(parts, known, strict=True):
                    if not checked:
                        check_readable(part)
            except CorruptPartError as exc:
                report["corrupt"].append(str(exc))
                continue
            if parts:
                report["verified" if all(known) else "unverified"].append(f"{dataset}/{folder.name}")
    return report


def verify_and_adopt(root: Path, adopt_legacy: bool) -> dict[str, list[str]]:
    """``uba-batch verify``: adopt the unverified partitions first when the operator asked
    (``adopted``), then the full verification report of ``root``."""
    adopted = adopt_unverified_partitions(root) if adopt_legacy else []
    return {**verify_data_dir(root), "adopted": adopted}


def adopt_unverified_partitions(root: Path) -> list[str]:
    """Record the sha256 of every part of the partitions read unverified (the operator's
    explicit ``uba-batch verify --adopt-legacy``): from then on they are verified like any
    other. Refused (CorruptPartError, nothing adopted) while any partition fails
    verification. The marker is created first when missing, listing them (so a crash
    half-way leaves every partition readable), then each gets its manifest and leaves the
    marker's list. Returns the names adopted."""
    root = Path(root)
    report = verify_data_dir(root)
    if report["corrupt"]:
        more = f" (and {len(report['corrupt']) - 1} more)" if len(report["corrupt"]) > 1 else ""
        raise CorruptPartError(f"nothing was adopted: {report['corrupt'][0]}{more}")
    if not report["unverified"]:
        return []
    for name in report["unverified"]:
        _refuse_repeated_event_ids(root / name, name)
    _enable_part_manifests(root)
    for name in report["unverified"]:
        folder = root / name
        with _locked(checksum_folder(folder) / _LOCK_NAME):
            manifest = _read_part_manifest(folder) or {"parts": {}, "pending": {}}
            parts: dict[str, _PartEntry] = {}
            for part in _finished_parts(folder):
                entry = _listed_entry(manifest, part.name) or {}
                if not entry.get("sha256"):
                    entry = {"sha256": file_sha256(part), "size": part.stat().st_size}
                parts[part.name] = entry
            _store_part_manifest(folder, {"parts": parts, "pending": {}})
        _forget_legacy(folder)
        for record in checksum_folder(folder).glob("*.parquet.json"):
            record.unlink(missing_ok=True)
    return report["unverified"]


def _refuse_repeated_event_ids(folder: Path, name: str) -> None:
    """An events partition written by another tool may repeat an event id, which ingest
    never stores for one date (DESIGN.md): its alerts would then share an alert id, and
    triage, feedback and entity risk would take two findings for one. Row conservation
    counts rows, not ids, so the adoption is where it is caught (nothing adopted)."""
    if Path(name).parts[0] != EVENTS:
        return
    repeated = repeated_event_ids(_finished_parts(folder))
    if repeated is not None:
        raise UserError(f"nothing was adopted: {name} {repeated}; an event id is unique within its date "
                        "(ingest drops repeats): remove the repeats and adopt again")


_ID_HASH_SEED = 0


def repeated_event_ids(parts: list[Path]) -> str | None:
    """``holds event_id 'e1' 2 times (and 3 more ids)`` when an id occurs more than once in
    the events ``parts`` (one day's), else None: the smallest repeated id, its count and how
    many other ids repeat. A null id is no id (the shard names it as an empty field).

    ``score`` runs this in its driver on a whole day, which it must not hold, so only the
    ``event_id`` column is scanned, one part at a time, and kept as 8-byte hashes: ids
    whose hash is unique are unique. Only the rows whose hash repeats (none on a sound day;
    two ids sharing a hash cannot be told apart from a repeat until their text is compared)
    are read again and counted by their text. A 2 M-event day: about 0.3 s and 65 MiB,
    where counting the ids by their text took 0.8 s and 300 MiB (docs/batch-scoring.md).
    """
    if not parts:
        return None
    clashing = _clashing_id_hashes(parts)
    if not clashing.len():
        return None
    suspect = pl.col("event_id").hash(_ID_HASH_SEED).is_in(clashing.implode())
    suspects = [_scan_ids(part).filter(suspect) for part in parts]
    repeated = (pl.concat(suspects).drop_nulls().group_by("event_id").len().filter(pl.col("len") > 1)
                .sort("event_id").collect())
    if not repeated.height:
        return None
    first, times = repeated.row(0)
    more = f" (and {repeated.height - 1} more ids)" if repeated.height > 1 else ""
    return f"holds event_id {first!r} {times} times{more}"


def _clashing_id_hashes(parts: list[Path]) -> pl.Series:
    """The hashes that more than one non-null ``event_id`` of ``parts`` has, found by
    sorting one 8-byte hash per row (a hash table of the ids, Polars' ``is_duplicated``
    or ``group_by``, took four times the memory)."""
    hashes = np.concatenate([
        _scan_ids(part).select(pl.col("event_id").drop_nulls().hash(_ID_HASH_SEED)).collect().to_series().to_numpy()
        for part in parts])
    hashes.sort()
    return pl.Series("hash", np.unique(hashes[1:][hashes[1:] == hashes[:-1]]), dtype=pl.UInt64)


def _kind(part: Path) -> str:
    """The dataset or table a part belongs to (``<dataset>/event_date=D/part`` or ``<table>/part``)."""
    folder = part.parent
    dataset = folder.parent.name if "=" in folder.name else folder.name
    return {EVENTS: "events", AGGREGATES: "aggregates"}.get(dataset, dataset)


def _open_lock(path: Path) -> int:
    """A descriptor of the lock file ``path`` (created, with its folder, if missing).

    A lock that cannot be opened (a folder where the file belongs, no permission on a
    data directory made by another user) is one line naming it: it was an
    IsADirectoryError/PermissionError traceback, and ingest wrote no summary."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise UserError(f"cannot open the lock file {path}: {exc.strerror or exc}; nothing was written "
                        "under it (remove what is in its place, or fix its permissions, and re-run)") from exc


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive ``flock`` on ``path`` (created if missing) for the ``with`` block."""
    fd = _open_lock(path)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def table_lock(root: Path, table: str) -> contextlib.AbstractContextManager[None]:
    """An exclusive lock on an append-only table for a read-check-append sequence (two
    analysts closing one alert at once: only the first close may pass the status check)."""
    return _locked(Path(root) / table / ".lock")


def stale_marks_lock(output_dir: Path) -> contextlib.AbstractContextManager[None]:
    """The lock of the run manifests' ``risk_stale`` marks (``<output-dir>/runs/.risk-stale.lock``).

    Marking a published day stale reads its manifest, adds an entry and writes it back;
    a score run checks what changed under its risk and then commits a new manifest. Two
    markings at once each wrote their own entry over the other's, and a marking that read
    the day's manifest just before a re-score committed wrote into the replaced version,
    so the new manifest did not carry it (found by an attack). Both hold this lock: the
    marker reads the manifest that is published, and the run either sees the change in its
    check or is committed before the marker reads."""
    return _locked(Path(output_dir) / RUNS / ".risk-stale.lock")


_INGEST_LOCK_NAME = ".ingest.lock"
INGEST_LOCKED_DAYS = 64  # a batch touching more days locks the whole data directory instead


INGEST_LOCK_TIMEOUT_SEC = 600.0  # settings.ingest.lock_timeout_sec
_LOCK_POLL_SEC = 0.2


@dataclasses.dataclass(frozen=True)
class LockWait:
    """How a lock waited for is named in the two lines ``_flock_waiting`` may print."""

    lock: str  # "the ingest lock"
    holder: str  # "another ingest"
    after: str  # what the error says after "still held by <holder> after N s"


INGEST_WAIT = LockWait("the ingest lock", "another ingest",
                       "(ingest.lock_timeout_sec): nothing of this batch was written; wait for that ingest, or stop "
                       "it, and re-run")


def _flock_waiting(fd: int, path: Path, mode: int, timeout: float, wait: LockWait = INGEST_WAIT) -> None:
    """``flock`` ``fd`` in ``mode``: at once when free; else say once on stderr which lock
    it waits for, poll, and after ``timeout`` seconds raise UserError naming the lock file."""
    try:
        fcntl.flock(fd, mode | fcntl.LOCK_NB)
        return
    except BlockingIOError:
        pass
    log.warning("waiting up to %gs for %s %s (%s holds it)", timeout, wait.lock, path, wait.holder)
    deadline = time.monotonic() + timeout
    while True:
        time.sleep(min(_LOCK_POLL_SEC, max(0.0, deadline - time.monotonic())))
        try:
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise UserError(f"{wait.lock} {path} is still held by {wait.holder} after {timeout:g}s "
                                f"{wait.after}") from None


@contextlib.contextmanager
def ingest_locks(root: Path, days: Iterable[date], timeout: float = INGEST_LOCK_TIMEOUT_SEC) -> Iterator[None]:
    """Hold the ingest lock of the events partition of each of ``days`` for the ``with`` block.

    An ingest checks a batch's ids against the stored ones and writes the batch under
    these locks, so a concurrent ingest of the same days sees those rows as stored (and
    quarantines them as duplicates) instead of storing them again. Locks are taken in
    date order, so two ingests never deadlock; a batch touching more than
    ``INGEST_LOCKED_DAYS`` days takes the data directory's lock exclusively instead
    (every batch holds it shared). Separate from the partition's manifest ``.lock``,
    which ``write_part`` takes inside this block (``flock`` is not re-entrant). A lock held
    by another ingest is waited for at most ``timeout`` seconds (one stderr line, then a
    UserError naming the lock file).
    """
    wanted = sorted(set(days))
    base = Path(root) / CHECKSUMS
    paths = [base / _INGEST_LOCK_NAME]
    if len(wanted) <= INGEST_LOCKED_DAYS:
        paths += [checksum_folder(partition_dir(root, EVENTS, day)) / _INGEST_LOCK_NAME for day in wanted]
    whole = len(wanted) > INGEST_LOCKED_DAYS
    fds: list[int] = []
    try:
        for index, path in enumerate(paths):
            fds.append(_open_lock(path))
            _flock_waiting(fds[-1], path, fcntl.LOCK_SH if index == 0 and not whole else fcntl.LOCK_EX, timeout)
        yield
    finally:
        for fd in reversed(fds):
            os.close(fd)  # releases the lock


def _enable_part_manifests(root: Path) -> None:
    """Create the marker before the first manifest of ``root`` is written, listing the
    partitions present then without a manifest (written before manifests, read as before)."""
    root = Path(root)
    if part_manifests_marker(root).is_file():
        return
    with _locked(root / CHECKSUMS / _LOCK_NAME):
        if part_manifests_marker(root).is_file():
            return
        found = _any_part_manifest(root)
        if found is not None:  # deleted: re-creating it would pass off damaged partitions as old ones
            raise CorruptPartError(f"{part_manifests_marker(root)} is missing although partitions of {root} "
                                   f"have checksum manifests (e.g. {found}): restore the file from a backup "
                                   "before writing here (docs/operations.md, stored data)")
        legacy: dict[str, list[str]] = {}
        for dataset in sorted(CHECKSUMMED):
            base = root / dataset
            folders = sorted(base.iterdir()) if base.is_dir() else []
            legacy[dataset] = [folder.name.partition("=")[2] for folder in folders
                               if _is_listed_partition(folder) and folder.is_dir() and _finished_parts(folder)
                               and not (checksum_folder(folder) / PART_MANIFEST_NAME).exists()]
        marker = {"format": PART_MANIFEST_FORMAT, "created_at": datetime.now(UTC).isoformat(), "legacy": legacy}
        write_json_atomic(marker, part_manifests_marker(root), durable=True)


def _forget_legacy(folder: Path) -> None:
    """The partition ``folder`` has a manifest now: drop it from the marker's legacy list,
    so deleting that manifest is detected."""
    root, dataset, label = folder.parents[1], folder.parent.name, folder.name.partition("=")[2]
    with _locked(root / CHECKSUMS / _LOCK_NAME):
        marker = _read_marker(root)
        if marker is None or label not in marker["legacy"].get(dataset, []):
            return
        marker["legacy"][dataset] = [d for d in marker["legacy"][dataset] if d != label]
        write_json_atomic(marker, part_manifests_marker(root), durable=True)


def _store_part_manifest(folder: Path, manifest: _PartList) -> None:
    body = {"format": PART_MANIFEST_FORMAT, "dataset": folder.parent.name, "partition": folder.name,
            "parts": manifest["parts"], "pending": manifest["pending"]}
    write_json_atomic(body, checksum_folder(folder) / PART_MANIFEST_NAME, durable=True)


def _manifest_for_update(folder: Path) -> tuple[_PartList, bool]:
    """The manifest a writer of ``folder`` (holding its lock) starts from, and whether the
    partition was adopted from the format before manifests.

    Pending entries are settled: listed if their part is there, dropped if not. A
    partition written before manifests is adopted: its parts are listed with the sha256
    of their per-part record, or none (written before checksums: membership is checked,
    content cannot be). A partition with parts that lost its manifest is refused.
    """
    manifest = _read_part_manifest(folder)
    adopted = False
    if manifest is None:
        parts = _finished_parts(folder) if folder.is_dir() else []
        manifest = _PartList(parts={}, pending={})
        if parts and _governing_manifest(folder, True) is None:  # raises unless the partition is legacy
            for part in parts:
                record = _recorded_checksum(part)
                manifest["parts"][part.name] = ({"sha256": record["sha256"], "size": record.get("size")}
                                                if record else {"sha256": None, "size": None})
            adopted = True
    for name, entry in list(manifest["pending"].items()):
        if (folder / name).exists():
            manifest["parts"][name] = entry
    manifest["pending"] = {}
    return manifest, adopted


def _remove_dead_temporaries(folder: Path) -> list[Path]:
    """Delete the ``.tmp-*`` files of the partition ``folder`` (call with its lock held).

    Every writer of an events or aggregates partition holds the partition's lock for as
    long as its temporary file exists, so one found under the lock belongs to a writer
    that died (``kill -9`` mid-ingest leaves a 0-byte ``.tmp-*.parquet``): readers
    already skip it, and this is where it is cleaned up.
    """
    removed = []
    for leftover in folder.glob(f"{TMP_PREFIX}*"):
        if leftover.is_file() or leftover.is_symlink():
            leftover.unlink(missing_ok=True)
            removed.append(leftover)
    if removed:
        log.info("removed %d temporary file(s) of a dead writer in %s", len(removed), folder)
    return removed


def _write_listed_part(path: Path, write: Callable[[Path], None]) -> Path:
    """Write a part of an events or aggregates partition and list it in the partition's manifest.

    Under the partition's lock: the finished file is hashed, listed as pending, renamed
    into place, then listed as a part. A failure after the rename takes the part out
    again, so a failed write leaves the partition as it was.
    """
    path = Path(path)
    folder = path.parent
    _enable_part_manifests(folder.parents[1])
    with _locked(checksum_folder(folder) / _LOCK_NAME):
        manifest, adopted = _manifest_for_update(folder)
        folder.mkdir(parents=True, exist_ok=True)
        _remove_dead_temporaries(folder)
        tmp = _tmp_path(folder, path.suffix)
        try:
            _fill(tmp, write, path, durable=True)
            entry: _PartEntry = {"sha256": file_sha256(tmp), "size": tmp.stat().st_size}
            manifest["parts"].pop(path.name, None)
            manifest["pending"][path.name] = entry
            _store_part_manifest(folder, manifest)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        try:
            fsync_dir(folder)
            del manifest["pending"][path.name]
            manifest["parts"][path.name] = entry
            _store_part_manifest(folder, manifest)
        except BaseException:
            path.unlink(missing_ok=True)  # listed as pending and absent: skipped by readers
            raise
        if adopted:
            _forget_legacy(folder)
            for part in manifest["parts"]:
                checksum_path(folder / part).unlink(missing_ok=True)
    return path


def _remove_listed_part(path: Path) -> None:
    """Delete a part and its manifest entry: listed as pending, deleted, then unlisted.

    When the manifest cannot be written first (a full disk), the part is deleted anyway
    to free the space, then unlisted.
    """
    folder = path.parent
    with _locked(checksum_folder(folder) / _LOCK_NAME):
        manifest = _read_part_manifest(folder)
        if manifest is None:
            path.unlink(missing_ok=True)
            return
        entry = manifest["parts"].pop(path.name, None) or manifest["pending"].pop(path.name, None)
        if entry is not None:
            manifest["pending"][path.name] = entry
            with contextlib.suppress(OSError):
                _store_part_manifest(folder, manifest)
        path.unlink(missing_ok=True)
        manifest["pending"].pop(path.name, None)
        _store_part_manifest(folder, manifest)


def _replace_listed_partition(df: pl.DataFrame, final: Path, name: str) -> Path:
    """``replace_partition`` for events and aggregates: the new part is hashed, every old
    entry and the new one are listed as pending, the folders are swapped, then the
    manifest lists exactly the new part."""
    _enable_part_manifests(final.parents[1])
    part = f"{name}.parquet"
    with _locked(checksum_folder(final) / _LOCK_NAME):
        try:
            old = _read_part_manifest(final)
        except CorruptPartError:
            old = None  # replaced as a whole: an unreadable manifest is rewritten
        staging = make_staging_dir(final.parent)
        try:
            staged = _write_atomic(staging / part, _parquet_writer(df), durable=True)
            entry: _PartEntry = {"sha256": file_sha256(staged), "size": staged.stat().st_size}
            pending = {**(old["parts"] if old else {}), **(old["pending"] if old else {}), part: entry}
            _store_part_manifest(final, {"parts": {}, "pending": pending})
            recover_replaced_dir(final)
            replace_dir_atomic(staging, final)
        finally:
            discard_dir(staging)
        _store_part_manifest(final, {"parts": {part: entry}, "pending": {}})
        for record in checksum_folder(final).glob("*.parquet.json"):  # per-part records before manifests
            record.unlink(missing_ok=True)
        _forget_legacy(final)
    return final / part


def write_json_atomic(data: object, path: Path, durable: bool = False) -> Path:
    """JSON with the same all-or-nothing guarantee as the Parquet writer (``durable``: fsynced)."""
    text = json.dumps(data, indent=2, sort_keys=True, default=str) + "\n"
    return _write_atomic(path, lambda tmp: tmp.write_text(text), durable=durable)


def read_json(path: Path) -> JsonValue:
    """Read a JSON file, turning a missing or corrupt file into a user error."""
    try:
        data: JsonValue = json.loads(Path(path).read_text())
    except FileNotFoundError as exc:
        raise UserError(f"file not found: {path}") from exc
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"cannot read JSON file {path}: {exc}") from exc
    return data


def _rename_exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths with Linux renameat2(RENAME_EXCHANGE).

    Returns False where the call does not exist or the filesystem refuses it (other
    kernels, some network/overlay filesystems), so the caller can fall back.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    renameat2.restype = ctypes.c_int
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EPERM):
        return False
    raise OSError(err, os.strerror(err), str(b))


def _aside_prefix(final: Path) -> str:
    return f"{TMP_PREFIX}old-{final.name}-"


def recover_replaced_dir(final: Path) -> bool:
    """Undo a swap that a crash interrupted, so the previous output is visible again.

    Only the fallback path (no RENAME_EXCHANGE) can be interrupted with ``final`` missing;
    its old copy then sits under an aside name derived from ``final``. If ``final`` is
    missing, the newest aside is renamed back; other asides are leftovers and removed.
    Returns True when something was restored.
    """
    parent = final.parent
    if not parent.is_dir():
        return False
    asides = sorted(
        (p for p in parent.iterdir() if p.name.startswith(_aside_prefix(final))),
        key=lambda p: p.stat().st_mtime,
    )
    restored = False
    if asides and not final.exists():
        os.replace(asides.pop(), final)
        fsync_dir(parent)
        restored = True
    for leftover in asides:
        shutil.rmtree(leftover, ignore_errors=True)
    return restored


def replace_dir_atomic(staging: Path, final: Path) -> None:
    """Swap a finished staging directory into place.

    Where the kernel and filesystem support it (Linux renameat2 RENAME_EXCHANGE), the two
    directories are exchanged in one atomic step, so ``final`` is at every instant the
    complete old output or the complete new one; the old copy then sits at ``staging``
    and is removed. Elsewhere the old directory is renamed aside (a ``.tmp-old-<name>-``
    sibling), the staging one renamed in, then the aside removed; a crash between the two
    renames leaves ``final`` missing until ``recover_replaced_dir(final)`` renames the
    aside back (the scoring job calls it before every run).
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    if final.exists() and _rename_exchange(staging, final):
        fsync_dir(final.parent)
        if staging.parent != final.parent:
            fsync_dir(staging.parent)
        shutil.rmtree(staging, ignore_errors=True)
        return
    aside = None
    if final.exists():
        aside = final.parent / f"{_aside_prefix(final)}{uuid.uuid4().hex}"
        os.replace(final, aside)
    try:
        os.replace(staging, final)
    except OSError as exc:
        # A concurrent writer of the same partition (e.g. two dates' runs computing one
        # lookback day's aggregates) created ``final`` after the check: replace theirs.
        if aside is None and exc.errno in (errno.ENOTEMPTY, errno.EEXIST) and final.is_dir():
            replace_dir_atomic(staging, final)
            return
        raise
    fsync_dir(final.parent)
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)


def make_staging_dir(parent: Path) -> Path:
    """A fresh hidden directory next to the final location (same filesystem, so rename is atomic)."""
    parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=TMP_PREFIX, dir=parent))


def ensure_dir(path: Path | str) -> Path:
    """A folder that may already exist (the model directory, before minutes of training)."""
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def check_dir_creatable(path: Path | str) -> None:
    """Raise the OSError ``ensure_dir(path)`` would, without creating anything.

    ``train`` must fail at once on a mistyped --model-dir (not after minutes of
    training), yet a refused train must leave no empty model directory behind: so it
    checks here first and creates the folder only when it has a bundle to put in it.
    The nearest existing ancestor decides: a file there, or a folder this process cannot
    write, fails as mkdir would."""
    folder = Path(path)
    nearest = folder
    while not os.path.lexists(nearest) and nearest.parent != nearest:
        nearest = nearest.parent
    if nearest == folder and folder.is_dir():
        return
    if nearest == folder:
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(folder))
    if not nearest.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(nearest))
    if not os.access(nearest, os.W_OK | os.X_OK):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(nearest))


def new_dir(path: Path | str, parents: bool = False) -> Path:
    """A folder that must not exist yet (a run's staging folder and its datasets): finding
    one means two runs share a name, which must fail rather than mix their parts."""
    folder = Path(path)
    folder.mkdir(parents=parents)
    return folder


def read_event_piece(path: Path | str, offset: int, rows: int) -> pl.DataFrame:
    """Rows ``[offset, offset + rows)`` of one events part, in ``EVENT_SCHEMA`` whatever
    types its writer chose (``conform_events``): a shard's slice of the day, read without
    touching the rest of the file. A value its
    field cannot hold (an hour of 300 stored as int64), a null in a required field, or an
    hour or weekday that disagrees with the timestamp fails naming the file."""
    scan = pl.scan_parquet(path, glob=False)
    try:
        piece = conform_events(scan, scan.collect_schema(), path).slice(offset, rows).collect()
    except pl.exceptions.InvalidOperationError as exc:
        raise unfit_event_value(exc, f"events part {path}") from exc
    _refuse_missing_values(piece, path)
    _refuse_clock_fields_off_their_timestamp(piece, path)
    return piece


def _refuse_missing_values(piece: pl.DataFrame, part: Path | str) -> None:
    """Ingest never stores an event without a required field, but another tool's part may
    hold nulls: a null event_id or timestamp was scored and published as if it were an
    event. Null counts are kept with each column, so this costs nothing per row."""
    counts = piece.select(REQUIRED_FIELDS).null_count().row(0, named=True)
    empty = next((name for name in REQUIRED_FIELDS if counts[name]), None)
    if empty is not None:
        raise UserError(f"events part {part}: field {empty} is empty in {counts[empty]} rows; it is required "
                        "(ingest never stores an event without it): the part was not written as the events "
                        "contract says (docs/batch-scoring.md)")


def _refuse_clock_fields_off_their_timestamp(piece: pl.DataFrame, part: Path | str) -> None:
    """Ingest derives ``hour_of_day`` and ``day_of_week`` from the timestamp (UTC hour,
    weekday 0=Monday: ``event_rules.clock_fields``), but another tool's part stores its
    own, and the features read those: a 02:00 login stored with hour 10 scored as office
    hours. A part where they disagree fails naming the first such event, since which of
    the two is wrong cannot be told from the part (a writer that stored local hours, or
    local times as naive UTC, is off by its offset either way). A null stands for "not
    given" (the features then take the timestamp's), as in the event contract. Two
    comparisons over the piece (~11 ms per 250k rows), rows looked at only when one fails."""
    derived = rules.clock_fields(pl.col("timestamp"))
    off = {name: (pl.col(name) != value).fill_null(False) for name, value in derived.items()}
    flags = piece.select(pl.any_horizontal(off.values()).alias("off"))["off"]
    if not flags.any():
        return
    row = int(flags.arg_true()[0])
    first = piece.slice(row, 1).select(
        "event_id", "timestamp", *rules.CLOCK_FIELDS, *(value.alias(f"_{name}") for name, value in derived.items()),
        *(test.alias(f"_off_{name}") for name, test in off.items())).row(0, named=True)
    name = next(name for name in rules.CLOCK_FIELDS if first[f"_off_{name}"])
    stamp = first["timestamp"].isoformat().replace("+00:00", "Z")
    raise UserError(f"events part {part}: event_id {first['event_id']!r} has {name} {first[name]}, but its "
                    f"timestamp {stamp} gives {first[f'_{name}']} ({rules.CLOCK_NOTES[name]}; "
                    f"{flags.sum():,} of the {piece.height:,} rows read disagree). Ingest derives hour_of_day "
                    "and day_of_week from the timestamp: the part was not written as the events contract "
                    "says (docs/batch-scoring.md)")


def unfit_event_value(exc: pl.exceptions.InvalidOperationError, where: str) -> UserError:
    """The one-line error for a stored value its field's type cannot hold (a strict cast of
    ``conform_events`` failed: an hour of 300 in an int64 column), naming ``where``."""
    reason = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
    return UserError(f"{where}: a value does not fit its field's type ({reason}); the part was not "
                     "written as the events contract says (docs/batch-scoring.md)")


def read_parts(paths: Iterable[Path | str], among: Iterable[str] | None = None) -> pl.DataFrame | None:
    """Part files of one dataset as one frame, None when there are none. ``among`` keeps
    only those of these columns that the parts have (older parts may lack new ones)."""
    files = [Path(p) for p in paths]
    if not files:
        return None
    if among is None:
        frames = [pl.read_parquet(f, glob=False) for f in files]
        return pl.concat(frames, how="vertical", rechunk=True) if len(frames) > 1 else frames[0]
    scan = pl.scan_parquet(files, glob=False)
    wanted = set(among)
    return scan.select([c for c in scan.collect_schema().names() if c in wanted]).collect()


def discard_dir(path: Path) -> None:
    """Remove a staging or leftover directory; a missing one is already gone."""
    shutil.rmtree(path, ignore_errors=True)


def file_sha256(path: Path) -> str:
    """Content hash of a written file, recorded in manifests so byte-identity is checkable."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def parts_fingerprint(files: Sequence[Path]) -> str:
    """sha256 over the names and sizes of a partition's parts (in name order, as
    ``partition_files`` lists them): what a score run records of the events it read, so a
    later look can tell that parts were added (late events ingested after the day was
    scored), removed or rewritten since, and, cut to 16 characters, the tag of the
    aggregates derived from them (``partition_fingerprint``). Names and sizes, not
    contents: the checksum manifests guard the bytes; this only has to notice a change."""
    digest = hashlib.sha256()
    for part in sorted(files, key=lambda p: p.name):
        digest.update(f"{part.name}\0{part.stat().st_size}\n".encode())
    return digest.hexdigest()


def partition_row_count(root: Path, dataset: str, day: date | str) -> int:
    """Rows in one partition from the Parquet footers only (0 when the partition is absent)."""
    lf = scan_partition(root, dataset, day)
    if lf is None:
        return 0
    return int(lf.select(pl.len()).collect().item())


# --- feedback, suppressions, user-day alerts, manifests, reports ---

FEEDBACK = "feedback"
SUPPRESSIONS = "suppressions"
FLAGGED_USERS = "flagged_users"
RISK = "risk"  # entity risk per user (uba.alerting.risk), published with the day's other outputs
MANIFEST_NAME = "manifest.json"


def name_unnamed_columns(names: list[str]) -> list[str]:
    """A CSV header's names with each empty one named by its position, ``(column 8)``.

    A spreadsheet saved as CSV often ends every line, header included, with empty cells
    (``...,device_type,,``): two or more unnamed columns, which the repeated-name check
    refused ("the header repeats column ''"), so the whole export was rejected. An
    unnamed column names no field, so which of them "holds the value" is never in
    question; named by position, they are listed as ignored like any other unknown
    column. A real column already called ``(column 8)`` keeps the empty name (and a
    second unnamed one is still refused as a repeat)."""
    taken = set(names)
    named = []
    for position, name in enumerate(names, start=1):
        placeholder = f"(column {position})"
        named.append(name if name or placeholder in taken else placeholder)
    return named


def not_utf8_error(path: Path) -> UserError | None:
    """The one-line refusal of a text file that is not UTF-8, naming its first bad byte (None if it is UTF-8).

    A spreadsheet saved as "CSV" on Windows is Latin-1 / Windows-1252: Polars' answer,
    "invalid utf-8 sequence", named neither the place nor the cure. The file is still
    refused (guessing an encoding would store wrong names without a word); the line and
    offset let the analyst find the character, and the hint says how to fix the file."""
    data = Path(path).read_bytes()
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        return UserError(f"{path} is not UTF-8: {not_utf8_problem(data[exc.start], line, exc.start)}")
    return None


def not_utf8_problem(byte: int, line: int, offset: int) -> str:
    """Where a text file stops being UTF-8, and the cure: the one wording of ``not_utf8_error``
    (users import, feedback) and of the rows ``uba-batch ingest`` quarantines for such bytes.

    ``byte`` is the first byte that is not UTF-8, at 1-based ``line`` and 0-based byte
    ``offset`` of the file."""
    return (f"line {line} holds the byte 0x{byte:02x} (byte offset {offset} of the file), which is not "
            "valid UTF-8; save the file as UTF-8 (a spreadsheet's \"CSV UTF-8\" format) and try again")


def read_csv_as_strings(path: Path) -> pl.DataFrame:
    """A small analyst CSV with every cell as text, so validation (not the reader) decides what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"file not found: {path}")
    try:
        with open(path, "rb") as handle:  # polars renames a repeated column "<name>_duplicated_0"
            header = handle.readline(1 << 16).decode("utf-8-sig", "replace").rstrip("\r\n").split(",")
        # glob=False: `labels[1].csv` is that file; Polars read it as a pattern (labels1.csv)
        frame = pl.read_csv(path, infer_schema=False, raise_if_empty=False, glob=False)
    except (pl.exceptions.ComputeError, OSError, UnicodeDecodeError) as exc:
        if "utf" in str(exc).lower():
            encoding = not_utf8_error(path)
            if encoding is not None:
                raise encoding from exc
        raise UserError(f"cannot read CSV file {path}: {first_line(exc)}") from exc  # polars adds hint paragraphs
    names = name_unnamed_columns([name.strip().strip('"').strip() for name in header])
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise UserError(f"{path}: the header repeats column {repeated[0]!r}; which one holds the value is "
                        "ambiguous, so the file is refused")
    if len(names) == frame.width:  # polars names repeats "_duplicated_0": the header's names, by position
        frame.columns = names
        return frame
    # "user_id, department" (a space after each comma) names department, as ingest reads it
    return frame.rename({name: name.strip() for name in frame.columns if name != name.strip()})


def csv_record_lines(path: Path, rows: int) -> list[int] | None:
    """The line each data record of a CSV starts on: a quoted cell may hold line breaks
    ("Research<newline>and Development", an analyst's two-line note), so a record's number
    is not its line, and an error naming "line N" must name the line an editor shows. None
    when Python's csv reader does not count the records Polars read (record number + 2 then)."""
    import csv

    starts: list[int] = []
    try:
        with open(path, newline="", encoding="utf-8-sig", errors="replace") as handle:
            reader = csv.reader(handle)
            previous_end = 0
            for _ in reader:
                starts.append(previous_end + 1)
                previous_end = reader.line_num
    except csv.Error:  # a cell over the csv module's field size limit
        return None
    return starts[1:] if len(starts) == rows + 1 else None


def append_table_part(df: pl.DataFrame, root: Path, table: str) -> Path:
    """Add one part to an append-only table (``root/table/part-*.parquet``); nothing is ever rewritten.

    The name starts with a UTC timestamp so listing order is write order. The write holds
    the table's compaction lock shared: a compaction (``uba.alerting.compaction``) waits for
    it, so no part can appear beside a merge with a name older than the merged ones.
    """
    folder = Path(root) / table
    with _table_writers_lock(folder, fcntl.LOCK_SH):
        return write_parquet_atomic(df, folder / f"part-{_next_part_stamp(folder)}-{uuid.uuid4().hex[:8]}.parquet")


_PART_STAMP = "%Y%m%dT%H%M%S%fZ"
_PART_NAME_STAMP = re.compile(r"part-(\d{8}T\d{12}Z)-")


def _next_part_stamp(folder: Path) -> str:
    """Now, or just after the newest part's stamp when this clock says earlier: a part's
    name is its place in the write order. A writer whose clock was behind another's (two
    hosts on one data directory, a clock stepped back) named a later verdict before an
    earlier one, and once a compaction had named its merged part after the newest part
    it merged, a verdict written after that compaction lost to every row of the merged
    part instead of only to the parts stamped after it: a compaction changed the verdict
    in effect (found by an attack)."""
    now = datetime.now(UTC).strftime(_PART_STAMP)
    stamps = (found.group(1) for found in map(_PART_NAME_STAMP.match, os.listdir(folder)) if found)
    newest = max(stamps, default="")
    if newest < now:
        return now
    try:
        return (datetime.strptime(newest, _PART_STAMP) + timedelta(microseconds=1)).strftime(_PART_STAMP)
    except ValueError:  # digits that are no time (a part named by hand): no place in the order
        return now


TABLE_COMPACT_LOCK = ".compact.lock"
MERGED_SUFFIX = "-merged"  # a part made by compaction: ``part-<stamp of its newest part>-<hex>-merged.parquet``
MERGED_PARTS_KEY = "uba.merged_parts"  # its Parquet metadata: the JSON list of the part names it replaces
MERGE_ORDER = "merge_order"  # its column: the rank of each row's original part (write order)
_PART_ORDER_SPAN = 2**32  # ``_part`` = listing index x span + merge order
_TABLE_READ_ATTEMPTS = 5
# a compaction waiting for appends: it said "the ingest lock ... is still held by another
# ingest (ingest.lock_timeout_sec): nothing of this batch was written" (found by an attack)
TABLE_COMPACTION_WAIT = LockWait("the table's compaction lock", "an append (a verdict, a triage action or a rule "
                                 "being written)", "(a stuck writer?): the table was not compacted, nothing "
                                 "changed; run it again later")


@contextlib.contextmanager
def _table_writers_lock(folder: Path, mode: int, timeout: float | None = None) -> Iterator[bool]:
    """The table's compaction lock: shared by appenders, exclusive for a compaction.
    ``timeout`` None waits; 0 tries once (yields False when it is held)."""
    path = folder / TABLE_COMPACT_LOCK
    folder.mkdir(parents=True, exist_ok=True)  # a file in the table's place: the CLI's errno line names it
    fd = _open_lock(path)
    try:
        if timeout == 0:
            try:
                fcntl.flock(fd, mode | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
        elif timeout is None:
            fcntl.flock(fd, mode)
        else:
            _flock_waiting(fd, path, mode, timeout, TABLE_COMPACTION_WAIT)
        yield True
    finally:
        os.close(fd)


def table_compaction_lock(root: Path, table: str, timeout: float | None) -> contextlib.AbstractContextManager[bool]:
    """The exclusive side of ``append_table_part``'s lock, for a compaction (True when held)."""
    return _table_writers_lock(Path(root) / table, fcntl.LOCK_EX, timeout)


def listed_table_parts(root: Path, table: str) -> list[Path]:
    """Every finished part file of the table in write order, replaced ones included."""
    folder = Path(root) / table
    if not os.path.lexists(folder):
        return []
    try:
        names = os.listdir(folder)
    except OSError as exc:
        raise UserError(f"the {table} table {folder} cannot be read ({exc.strerror or exc}): its records (analysts' "
                        "decisions) would be missed; fix its permissions, or restore the folder, and run again") from exc
    return sorted(folder / name for name in names
                  if name.startswith("part-") and name.endswith(".parquet") and not name.startswith(TMP_PREFIX))


def merged_part_sources(path: Path) -> list[str]:
    """The part names a merged part replaces (its Parquet metadata); [] for a written part."""
    if not path.stem.endswith(MERGED_SUFFIX):
        return []
    _check_regular_table_part(path)
    try:
        raw = pl.read_parquet_metadata(path).get(MERGED_PARTS_KEY)
    except pl.exceptions.ComputeError as exc:
        raise UserError(f"cannot read the merged table part {path}: {exc}; move it aside only if the parts it "
                        "replaced are still beside it (then the table is whole without it)") from exc
    try:
        names = json.loads(raw) if raw else None
    except ValueError:
        names = None
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise UserError(f"the merged table part {path} does not say which parts it replaces ({MERGED_PARTS_KEY})")
    return names


def replaced_table_parts(files: Sequence[Path]) -> set[str]:
    """Names among ``files`` that a merged part there replaces: left over when a compaction
    stopped between its merge and its deletes, and read as gone.

    A merged part replaces only parts older than itself, so one that names itself, or a
    merged part that (through others) names it, is garbage: its rows were read as gone and
    the next compaction deleted it as a leftover, the table's rows lost without a word
    (found by an attack). It is refused naming it."""
    sources = {f: set(merged_part_sources(f)) for f in files}
    merged = {f.name: f for f in sources if f.stem.endswith(MERGED_SUFFIX)}
    graph = {name: sources[f] & merged.keys() for name, f in merged.items()}
    for f in merged.values():
        if _names_itself(f.name, graph):
            raise UserError(f"the merged table part {f} names itself among the parts it replaces ({MERGED_PARTS_KEY}, "
                            "directly or through another merged part): its rows would be read as gone and a compaction "
                            "would delete it; restore it from a backup")
    return set().union(*sources.values())


def _names_itself(start: str, graph: dict[str, set[str]]) -> bool:
    """Whether ``start`` is reached again following what each merged part replaces."""
    seen: set[str] = set()
    todo = list(graph[start])
    while todo:
        name = todo.pop()
        if name == start:
            return True
        if name not in seen:
            seen.add(name)
            todo.extend(graph.get(name, ()))
    return False


def remove_table_files(folder: Path, files: Sequence[Path]) -> None:
    """Delete ``files`` of a table folder (parts a merged part replaces), durably."""
    for f in files:
        f.unlink(missing_ok=True)
    if files:
        fsync_dir(folder)


def remove_killed_table_writes(folder: Path) -> None:
    """Delete the temporary files of killed writes in a table folder. Only for a caller
    holding the table's compaction lock exclusively: every writer of a table writes its
    temporary file under the shared side, so none is in flight."""
    for name in os.listdir(folder):
        tmp = folder / name
        if name.startswith(TMP_PREFIX) and name.endswith(".parquet") and tmp.is_file() and not tmp.is_symlink():
            tmp.unlink(missing_ok=True)


def table_part_files(root: Path, table: str) -> list[Path]:
    """Finished parts of an append-only table, in write order; none when the table was
    never written. Parts a merged part replaces are left out (``replaced_table_parts``).

    The tables hold analysts' decisions (suppression rules, verdicts, triage), so a folder
    that is there but cannot be listed is a user error naming it, never an empty table:
    ``glob`` skipped a folder the job's user may not read, and a file or a link to nothing
    in its place was "no folder", so a night's run dropped every suppression rule (13
    suppressed alerts came back) or every benign verdict without a word (found by an attack).
    """
    files = listed_table_parts(root, table)
    fault_point("table_listing", Path(root) / table)  # listed, merged parts not read yet (tests)
    replaced = replaced_table_parts(files)
    return [f for f in files if f.name not in replaced]


def scan_table(root: Path, table: str) -> pl.LazyFrame | None:
    """An append-only table (read whole now), each row tagged with ``_part``, its write order
    at part granularity (a merged part keeps its rows' original order); None when empty.

    Read eagerly, so a compaction deleting the parts it merged cannot pull a file from
    under a later collect; a part gone between the listing and its read (merged meanwhile)
    makes it list again."""
    for attempt in range(_TABLE_READ_ATTEMPTS):
        try:
            frame = read_table_parts(table_part_files(root, table))
        except FileNotFoundError:
            if attempt == _TABLE_READ_ATTEMPTS - 1:
                raise
            continue
        return None if frame is None else frame.lazy()
    raise AssertionError("unreachable")


_TABLE_READ_THREADS = 8


def read_table_parts(files: Sequence[Path]) -> pl.DataFrame | None:
    """The parts whole as one frame, with ``_part`` (``scan_table``) in place of a merged
    part's ``merge_order``; None for no part. Read in threads (pyarrow releases the GIL):
    3,000 one-row parts in 1.8 s against 3.0 s one by one, while collecting one lazy concat
    of them all took 100 s on this Polars (measured 2026-12-07). A part that does not read
    is named as ``check_readable`` names it."""
    if not files:
        return None
    with ThreadPoolExecutor(min(_TABLE_READ_THREADS, len(files))) as pool:
        frames = list(pool.map(_read_table_part, range(len(files)), files))
    return pl.concat(frames, how="diagonal_relaxed")


def _check_regular_table_part(path: Path) -> None:
    """Refuse a FIFO, device, folder or dangling link named like a table part, as
    ``_finished_parts`` refuses one in a partition: opening a FIFO waits for a writer, so
    one in ``triage/`` hung ``alerts list``, ``tables compact`` and ``score`` (its
    compaction, after publishing) for good (found by an attack). A part gone since the
    listing (merged and deleted meanwhile) is FileNotFoundError, which ``scan_table``
    answers by listing again."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        if not os.path.lexists(path):
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), str(path)) from None
        mode = 0  # a link to nothing
    if not stat.S_ISREG(mode):
        raise CorruptPartError(f"{_kind(path)} part {path} is not a regular file (a FIFO, device, folder or "
                               "dangling link named like a part): reading it could block or fail; remove it")


def _read_table_part(index: int, path: Path) -> pl.DataFrame:
    _check_regular_table_part(path)
    try:
        frame = read_parquet_file(path)
    except UNREADABLE_PARQUET as exc:
        if not os.path.lexists(path):  # merged and deleted since it was listed: not corrupt, gone
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), str(path)) from None
        raise unreadable_part(path, exc, "move it aside or restore it from a backup; the other parts of its "
                                         "table are intact") from exc
    order = pl.col(MERGE_ORDER).cast(pl.Int64) if MERGE_ORDER in frame.columns else pl.lit(0, dtype=pl.Int64)
    return frame.with_columns((index * _PART_ORDER_SPAN + order).alias("_part")).drop(MERGE_ORDER, strict=False)


def replace_partition(df: pl.DataFrame, root: Path, dataset: str, day: date | str, name: str = "part-0") -> Path:
    """Make ``df`` the whole content of one partition, swapped in atomically (re-runs replace, never add).

    Events and aggregates partitions also get their manifest rewritten to list exactly
    the new part (``_replace_listed_partition``).
    """
    final = partition_dir(root, dataset, day)
    if dataset in CHECKSUMMED:
        return _replace_listed_partition(df, final, name)
    staging = make_staging_dir(final.parent)
    if final.is_symlink():  # a dataset of a published day: replace the folder of its current version
        final = Path(os.path.realpath(final))
    try:
        _write_atomic(staging / f"{name}.parquet", _parquet_writer(df), durable=True)
        recover_replaced_dir(final)
        replace_dir_atomic(staging, final)
    finally:
        discard_dir(staging)
    return final / f"{name}.parquet"


def run_manifest_path(output_dir: Path, day: date | str) -> Path:
    """Where the score run of ``day`` writes its manifest."""
    return partition_dir(output_dir, RUNS, day) / MANIFEST_NAME


def run_manifest_dates(output_dir: Path) -> list[date]:
    """Days that have a finished run manifest, ascending."""
    return dated_dirs(Path(output_dir) / RUNS, PARTITION_COLUMN, lambda folder: (folder / MANIFEST_NAME).is_file())


def read_run_manifest(output_dir: Path, day: date) -> dict[str, JsonValue] | None:
    """The manifest of ``day``'s run, or None when that day was never scored.

    Readers of a day (report, monitor, backfill) start here, so the day's layout is
    checked first as score checks it: a hand-made ``.version`` or link naming another
    day's version would otherwise show that day's figures under this day's date.
    """
    check_day_layout(output_dir, day)
    path = run_manifest_path(output_dir, day)
    if not path.is_file():
        return None
    data = read_json(path)
    if not isinstance(data, dict):
        raise UserError(f"run manifest {path} does not hold a JSON object")
    return data


def write_text_atomic(text: str, path: Path, durable: bool = False) -> Path:
    """Small text file (a pointer, a note) written whole or not at all; ``durable`` also fsyncs."""
    return _write_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"), durable=durable)


def write_bytes_atomic(data: bytes, path: Path) -> Path:
    """Binary file (a PNG, an HTML page) with the same all-or-nothing guarantee as the other writers."""
    return _write_atomic(path, lambda tmp: tmp.write_bytes(data))


# --- generate: raw-event exports in the formats ingest reads ---


def write_csv_atomic(df: pl.DataFrame, path: Path) -> Path:
    """CSV export (header row) with the same all-or-nothing guarantee as the Parquet writer."""
    return _write_atomic(path, df.write_csv)


def write_jsonl_atomic(df: pl.DataFrame, path: Path) -> Path:
    """JSON Lines export (one object per row), written whole or not at all."""
    return _write_atomic(path, df.write_ndjson)


def read_parquet_if_exists(path: Path) -> pl.DataFrame | None:
    """A whole small Parquet file (labels, users), None when absent, a user error when unreadable."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        return read_parquet_file(path)
    except UNREADABLE_PARQUET as exc:
        raise UserError(f"cannot read Parquet file {path}: {exc}") from exc


def read_bytes_if_exists(path: Path) -> bytes | None:
    """A small file's bytes in one read, None when absent, a user error when unreadable."""
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror or exc} (errno {exc.errno})") from exc


def read_parquet_bytes(data: bytes, path: Path) -> pl.DataFrame:
    """A whole Parquet file already read into memory (``path`` names it in the error)."""
    try:
        return read_parquet_file(data)
    except UNREADABLE_PARQUET as exc:
        raise UserError(f"cannot read Parquet file {path}: {exc}") from exc

# --- ingest: raw input files, stored event ids, run summaries ---

INGEST_RUNS = "ingest_runs"
_GLOB_CHARS = frozenset("*?[")


def _split_glob(pattern: str) -> tuple[str, list[str]]:
    """The fixed leading folder of a glob and its remaining components."""
    parts = [part for part in pattern.split("/") if part not in ("", ".")]
    fixed: list[str] = []
    while parts and not _GLOB_CHARS & set(parts[0]):
        fixed.append(parts.pop(0))
    root = "/" if pattern.startswith("/") else ""
    return os.path.join(root, *fixed) if fixed else root, parts


def _glob_names(folder: str, part: str) -> list[str]:
    """Entries of ``folder`` matching one glob component; hidden ones only for a '.' pattern, as glob does."""
    try:
        names = os.listdir(folder or ".")
    except OSError:
        return []
    return [os.path.join(folder, name) for name in names
            if fnmatch.fnmatchcase(name, part) and (part.startswith(".") or not name.startswith("."))]


def _walk_dirs(top: str) -> list[str]:
    """``top`` and every folder below it (not hidden ones), each entered once.

    Folder symlinks are followed, but a folder already entered (same device and inode)
    is not entered again, so a symlink loop costs one visit instead of one per level.
    Real folders are walked before any symlink is followed, so a folder reached both
    ways is listed under its real path.
    """
    found: list[str] = []
    seen: set[tuple[int, int]] = set()
    real, linked = deque([top]), deque[str]()
    while real or linked:
        folder = real.popleft() if real else linked.popleft()
        try:
            info = os.stat(folder or ".")
            entries = sorted(os.scandir(folder or "."), key=lambda e: e.name)
        except OSError:
            continue
        if (info.st_dev, info.st_ino) in seen:
            continue
        seen.add((info.st_dev, info.st_ino))
        found.append(folder)
        for entry in entries:
            try:
                if entry.name.startswith(".") or not entry.is_dir():
                    continue
                (linked if entry.is_symlink() else real).append(os.path.join(folder, entry.name))
            except OSError:
                continue
    return found


def _glob_files(pattern: str) -> list[Path]:
    """Files matching a glob (``**`` = any depth of folders), sorted.

    ``glob.glob(recursive=True)`` follows folder symlinks under ``**`` without noticing
    a loop: one ``a/loop -> ..`` listed every file about 40 times (and two loops an
    exponential number of times). Here ``**`` enters each folder once.
    """
    current, parts = _split_glob(pattern)
    candidates = [current]
    for index, part in enumerate(parts):
        last = index == len(parts) - 1
        if part == "**":
            folders = [sub for folder in candidates for sub in _walk_dirs(folder)]
            candidates = [entry for folder in folders for entry in _glob_names(folder, "*")] if last else folders
        elif _GLOB_CHARS & set(part):
            candidates = [entry for folder in candidates for entry in _glob_names(folder, part)]
        else:
            candidates = [os.path.join(folder, part) for folder in candidates]
    return sorted({Path(c) for c in candidates if os.path.isfile(c)})


def _file_key(path: Path) -> tuple[int, int] | Path:
    """What makes two paths the same file: device and inode (the path itself if stat fails)."""
    try:
        info = path.stat()
    except OSError:
        return path
    return info.st_dev, info.st_ino


def _refuse_links_out_of(base: str, pattern: str, matches: list[Path]) -> None:
    """A file a glob found through a symlink pointing outside the glob's folder is refused,
    naming both: a drop folder anyone can write to would otherwise let a link to
    ``/var/run/secrets/...`` or ``/proc/self/environ`` be read, and its first line shown
    back in the summary, the log and quarantine reasons. A path named directly is followed:
    the operator chose it."""
    root = os.path.realpath(base or ".")
    for match in matches:
        target = os.path.realpath(match)
        if os.path.commonpath([root, target]) != root:
            raise UserError(f"{match} (matched by {pattern!r}) is a link to {target}, outside {root}; "
                            "name the file itself to ingest it")


def expand_inputs(patterns: Iterable[str]) -> list[Path]:
    """Files named by paths or globs, in the order given (each glob sorted), each file once.

    A glob matching nothing, a missing path or a directory is a user error, checked before
    anything is ingested so a typo never leaves a half-done run. A file reached by two
    paths (a symlink, a hard link, two globs) is read once, under the first path. A glob
    does not follow links out of its own folder (``_refuse_links_out_of``).
    """
    found: list[Path] = []
    seen: set[tuple[int, int] | Path] = set()
    for pattern in patterns:
        if _GLOB_CHARS & set(pattern) and not Path(pattern).is_file():  # 'export [1].csv' is a file
            matches = _glob_files(pattern)
            if not matches:
                raise UserError(f"no files match {pattern!r}")
            _refuse_links_out_of(_split_glob(pattern)[0], pattern, matches)
        else:
            path = Path(pattern)
            if path.is_dir():
                raise UserError(f"{path} is a directory; pass files or a glob such as '{path}/*.csv'")
            if not path.is_file():
                raise UserError(f"input file not found: {path}")
            matches = [path]
        for match in matches:
            key = _file_key(match)
            if key not in seen:
                seen.add(key)
                found.append(match)
    return found


def open_input(path: Path) -> InputStream:
    """Binary reader for an input file, decompressing ``.gz`` on the fly."""
    path = Path(path)
    try:
        handle = open(path, "rb")  # noqa: SIM115 - the caller owns and closes it
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror or exc}") from exc
    if path.suffix.lower() == ".gz":
        return gzip.GzipFile(fileobj=handle, mode="rb")
    return handle


def check_input_readable(path: Path, fmt: str) -> None:
    """Fail early, with one line, on a file that cannot be opened or is not the format claimed."""
    path = Path(path)
    try:
        if fmt == "parquet":
            import pyarrow.parquet as pq

            pq.ParquetFile(path).close()
        else:
            with open_input(path) as handle:
                handle.read(1)
    except UserError:
        raise
    except Exception as exc:  # OSError, gzip's BadGzipFile/EOFError, pyarrow's own errors
        raise UserError(f"cannot read {path} as {fmt}: {exc}") from exc


def open_parquet(path: Path, read_dictionary: list[str] | None = None) -> Any:  # pyarrow (untyped): a ParquetFile
    """A ``pyarrow.parquet.ParquetFile`` (a context manager): its footer is read, no row group yet.
    ``read_dictionary`` names columns read as Arrow dictionaries (not decoded)."""
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(path, read_dictionary=read_dictionary)
    except Exception as exc:
        raise UserError(f"cannot read {path} as parquet: {exc}") from exc


def scan_event_ids(data_dir: Path, days: Iterable[date]) -> pl.LazyFrame | None:
    """``event_id`` and ``event_date`` of the events stored for ``days`` (None when none are).

    Only the id column is read, so a duplicate check costs a fraction of the stored data.
    Each part is scanned on its own and its ids read as strings (``conform_events``): a part
    written by another tool may store them dictionary-encoded, which one scan over the
    partition, or the concatenation of the days, refused in the engine.
    """
    frames = [
        _scan_ids(part).select(pl.col("event_id"), pl.lit(day, pl.Date).alias(PARTITION_COLUMN))
        for day in days
        for part in partition_files(data_dir, EVENTS, day)
    ]
    return pl.concat(frames) if frames else None


def _scan_ids(part: Path) -> pl.LazyFrame:
    """``event_id`` of one events part, as a string whatever type its writer stored it in."""
    scan = pl.scan_parquet(part, glob=False)
    stored = scan.collect_schema().get("event_id", pl.String())
    return scan.select(_stored_as_event_type("event_id", stored, part))


def ingest_run_path(data_dir: Path, run_id: str) -> Path:
    """Where the summary of one ingest run is kept: ``<data-dir>/ingest_runs/<run_id>.json``."""
    return Path(data_dir) / INGEST_RUNS / f"{run_id}.json"


# --- features: daily aggregates and baseline snapshots ---

BASELINES = "baselines"
BASELINE_SNAPSHOT_NAME = "baselines.parquet"
AGGREGATE_PART_PREFIX = "part-"


def partition_fingerprint(root: Path, dataset: str, day: date | str) -> str | None:
    """Short hash of a partition's part names and sizes (None when it has no parts).

    Parts are written once under unique names and never edited in place, so a changed
    name/size list means the partition's content changed (e.g. a later ingest added a part).
    """
    files = partition_files(root, dataset, day)
    return parts_fingerprint(files)[:16] if files else None


def aggregates_tag(data_dir: Path, day: date) -> str | None:
    """Tag of the finished aggregates part of ``day`` (its name minus prefix), or None.

    None also when the partition does not match its manifest (a part added or gone, the
    manifest deleted): aggregates are derived, so the caller rebuilds them from the events.
    """
    try:
        files = partition_files(data_dir, AGGREGATES, day)
    except CorruptPartError as exc:
        log.warning("%s; rebuilding the aggregates of %s from its events", exc, day)
        return None
    if len(files) != 1 or not files[0].stem.startswith(AGGREGATE_PART_PREFIX):
        return None
    return files[0].stem[len(AGGREGATE_PART_PREFIX):]


def write_aggregates(df: pl.DataFrame, data_dir: Path, day: date, tag: str) -> Path:
    """Make ``df`` the aggregates of ``day`` (one part named by ``tag``, swapped in atomically).

    ``event_date`` is dropped from the file: it lives in the Hive path, as for events.
    """
    body = df.drop(PARTITION_COLUMN, strict=False)
    fault_point("aggregates", partition_dir(data_dir, AGGREGATES, day))
    return replace_partition(body, data_dir, AGGREGATES, day, name=f"{AGGREGATE_PART_PREFIX}{tag}")


def scan_aggregates(data_dir: Path, days: Iterable[date]) -> pl.LazyFrame | None:
    """Lazy scan of the aggregates of ``days`` with ``event_date`` restored (None if none exist).

    Only files under ``aggregates/`` are opened. Days written with different category
    lists are stacked with missing count columns as null (``stack_aggregates``).
    """
    return stack_aggregates([frame for _, frame in aggregate_part_scans(data_dir, days)])


def aggregate_part_scans(data_dir: Path, days: Iterable[date]) -> list[tuple[date, pl.LazyFrame]]:
    """``scan_aggregates`` part by part: each day's parts, checked, with ``event_date``
    restored, for a caller that treats days apart before stacking them."""
    paths = [(day, path) for day in sorted(set(days)) for path in partition_files(data_dir, AGGREGATES, day)]
    for _, path in paths:  # small files (one row per user), hashed once per process
        verify_part(path, AGGREGATES_REMEDY)
        check_readable(path)
    return [(day, pl.scan_parquet(path, glob=False).with_columns(pl.lit(day, dtype=pl.Date).alias(PARTITION_COLUMN)))
            for day, path in paths]


def stack_aggregates(frames: list[pl.LazyFrame]) -> pl.LazyFrame | None:
    """Parts of aggregates as one frame (missing count columns null), None for no part."""
    if not frames:
        return None
    return pl.concat(frames, how="diagonal_relaxed")


EVENTS_REMEDY = "restore it from a backup or re-ingest the day's source"
AGGREGATES_REMEDY = ("aggregates are derived from the day's events: delete the part and re-run to "
                     "rebuild it (score and train do so by themselves while the events are there)")


def check_readable(part: Path, remedy: str = "") -> None:
    """A part whose Parquet footer does not read is named in one line, with what to do
    about it, here instead of as a decoder traceback when a scan is collected far from
    the file (parts without a checksum record, append-only tables, published outputs)."""
    try:
        parquet_schema(part)
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise unreadable_part(part, exc, remedy) from exc


def unreadable_part(part: Path, exc: BaseException, remedy: str = "") -> CorruptPartError:
    """``check_readable``'s error for ``part``."""
    return CorruptPartError(f"{_kind(part)} part {part} is not a readable Parquet file: {first_line(exc)}"
                            + (f"; {remedy}" if remedy else ""))


def baseline_snapshot_path(data_dir: Path, as_of: date) -> Path:
    """``<data-dir>/baselines/as_of=YYYY-MM-DD/baselines.parquet``."""
    return Path(data_dir) / BASELINES / f"as_of={as_of.isoformat()}" / BASELINE_SNAPSHOT_NAME


def write_baseline_snapshot(df: pl.DataFrame | bytes, data_dir: Path, as_of: date) -> Path:
    """Write (or atomically replace) the baseline snapshot for ``as_of``: a frame, or a
    frame already encoded by ``parquet_bytes``."""
    path = baseline_snapshot_path(data_dir, as_of)
    fault_point("baseline_snapshot", path)
    if isinstance(df, bytes):
        return _write_atomic(path, lambda tmp: tmp.write_bytes(df), durable=True)  # as write_parquet_atomic
    return write_parquet_atomic(df, path)


def baseline_snapshot_dates(data_dir: Path) -> list[date]:
    """Dates that have a finished baseline snapshot, ascending."""
    return dated_dirs(Path(data_dir) / BASELINES, "as_of",
                      lambda folder: (folder / BASELINE_SNAPSHOT_NAME).is_file())


def latest_baseline_snapshot(data_dir: Path) -> tuple[date, Path] | None:
    """The newest snapshot as (as_of, path), or None when there is none yet."""
    dates = baseline_snapshot_dates(data_dir)
    if not dates:
        return None
    return dates[-1], baseline_snapshot_path(data_dir, dates[-1])


def read_baseline_snapshot(path: Path) -> pl.DataFrame:
    """Load a snapshot; a missing or unreadable file is a user error naming it."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"baseline snapshot not found: {path}")
    try:
        return read_parquet_file(path)
    except UNREADABLE_PARQUET as exc:
        raise UserError(f"cannot read baseline snapshot {path}: {exc}") from exc


# --- per-user score history of a bundle ---


def user_score_history_path(bundle_path: Path, quantile: float) -> Path:
    return Path(bundle_path) / f"user_scores-q{quantile:.4f}.parquet"


# Cap on the per-user table read back (a row per user of a few dozen bytes): a million
# users is ~20 MB, so the cap only stops a file that was never this table.
MAX_USER_HISTORY_BYTES = 256 << 20


def write_user_score_history(df: pl.DataFrame, bundle_path: Path, quantile: float) -> Path:
    """Store the per-user score table next to the bundle files it was derived from."""
    return write_parquet_atomic(df, user_score_history_path(bundle_path, quantile))


# --- published days (hardening): one rename commits a whole day ---
#
#   <out>/.days/event_date=D/<v>/{scores,flagged,flagged_users}/part-*.parquet   version <v> of D
#   <out>/.days/event_date=D/<v>/manifest.json, .previous (the version it replaced)
#   <out>/.days/event_date=D/<v>/.anchor/                 an empty folder: what `.version` links name
#   <out>/.days/event_date=D/<v>/scores/.version -> ../.anchor
#   <out>/scores/event_date=D/            THE ANCHOR, a real folder: the published version's scores
#                                         parts (hard links) and
#                                         .version -> ../../.days/event_date=D/<v>/.anchor
#   <out>/flagged/event_date=D            -> ../scores/event_date=D/.version/../flagged
#   <out>/flagged_users/event_date=D      -> ../scores/event_date=D/.version/../flagged_users
#   <out>/runs/event_date=D/manifest.json -> ../../scores/event_date=D/.version/../manifest.json
#
# Every link is relative, so the output directory can be moved or mounted elsewhere. The
# kernel resolves ``..`` after following ``.version`` physically (to the version folder),
# so every dataset and the manifest of D are reached through the anchor, and one
# renameat2(RENAME_EXCHANGE) of a finished folder with the anchor switches them all at
# once. The anchor is a real folder so that ``cp -r scores/`` copies the scores themselves
# and ``find out/scores`` lists them (the other datasets are links: ``find -L``).
#
# Where the filesystem cannot exchange two entries (NFS, CephFS, macOS), the anchor is a
# relative symlink, ``scores/event_date=D -> ../.days/event_date=D/<v>/scores``, and the
# commit is a rename(2) of a new symlink over it: the same single atomic step, the same
# other links (they go through the version's own ``scores/.version``). Readers see either
# form; so they do the absolute links of the layout before, which the next run of D
# rewrites relative. ``.anchor`` is empty so that globs following ``.version`` (Polars'
# ``**``) find nothing there.

DAYS = ".days"
DAY_DATASETS: tuple[str, ...] = (SCORES, FLAGGED, FLAGGED_USERS, RISK)
EMPTY_VERSION = "empty"
PREVIOUS_NAME = ".previous"
LEGACY_PREFIX = "legacy-"
VERSION_LINK = ".version"
ANCHOR_DIR = ".anchor"
_PUBLISH_PREFIX = ".publish-"
_ASIDE_PREFIX = ".aside-"


def day_versions_dir(output_dir: Path, day: date | str) -> Path:
    """``<out>/.days/event_date=D``: every kept version of day D's outputs."""
    return Path(output_dir) / DAYS / f"{PARTITION_COLUMN}={_day_label(day)}"


def _day_label(day: date | str) -> str:
    return day.isoformat() if isinstance(day, date) else day


def _anchor(output_dir: Path, day: date | str) -> Path:
    return partition_dir(output_dir, SCORES, day)


def _version_link_text(day: date | str, version: str) -> str:
    """Text of ``.version`` inside the anchor folder (two levels below the output directory)."""
    return f"../../{DAYS}/{PARTITION_COLUMN}={_day_label(day)}/{version}/{ANCHOR_DIR}"


def _anchor_link_text(day: date | str, version: str) -> str:
    """Text of the anchor where it is a symlink (no RENAME_EXCHANGE)."""
    return f"../{DAYS}/{PARTITION_COLUMN}={_day_label(day)}/{version}/{SCORES}"


def _link_text(day: date | str, name: str) -> str:
    """What the stable link of ``name`` (a dataset other than scores, or manifest.json) points at."""
    if name == SCORES:
        raise ValueError("the anchor names a version")
    up = "../.." if name == MANIFEST_NAME else ".."
    return f"{up}/{SCORES}/{PARTITION_COLUMN}={_day_label(day)}/{VERSION_LINK}/../{name}"


def _stable_link(output_dir: Path, day: date | str, name: str) -> Path:
    if name == MANIFEST_NAME:
        return run_manifest_path(output_dir, day)
    return partition_dir(output_dir, name, day)


class ForeignDayLayoutError(UserError):
    """A link or entry of a day's outputs that this product did not make (it points
    outside the day's versions): refused before anything of the day is touched."""


def _version_in(text: str, day: date | str, tail: str) -> str | None:
    """The version named by a link text of the form ``.../.days/event_date=D/<version>/<tail>``
    (relative as written now, or absolute as the layout before relative links wrote it);
    None for any other text (a link this product did not make)."""
    parts = Path(text).parts
    if len(parts) < 4 or list(parts[-4:]) != [DAYS, f"{PARTITION_COLUMN}={_day_label(day)}", parts[-2], tail]:
        return None
    version = parts[-2]
    if version in ("", ".", "..") or version.startswith("."):
        return None
    if not Path(text).is_absolute() and list(parts[:-4]) != [".."] * (1 if tail == SCORES else 2):
        return None
    return version


def published_version(output_dir: Path, day: date | str) -> str | None:
    """The version of D that readers see, None when D has no versioned output (never
    scored, or still in the layout before versions) or when its anchor names no version
    of D (a link made by hand: see ``check_day_layout``). Reads link texts only, so it
    works on an output directory that was moved while its links were still absolute."""
    anchor = _anchor(output_dir, day)
    try:
        if anchor.is_symlink():
            return _version_in(os.readlink(anchor), day, SCORES)
        return _version_in(os.readlink(anchor / VERSION_LINK), day, ANCHOR_DIR)
    except OSError:
        return None


def _through_anchor(text: str, day: date | str, name: str) -> bool:
    """Whether ``text`` is the link of ``name`` this product writes (relative through the
    anchor's ``.version``), or the absolute one of the layout before relative links."""
    if text == _link_text(day, name):
        return True
    parts = Path(text).parts
    tail = [SCORES, f"{PARTITION_COLUMN}={_day_label(day)}", "..", name]
    return Path(text).is_absolute() and len(parts) > 4 and list(parts[-4:]) == tail


def dangling_day_links(output_dir: Path, day: date | str) -> list[Path]:
    """The links of day D (anchor, other datasets, manifest) that exist but resolve to nothing."""
    links = [_anchor(output_dir, day), _anchor(output_dir, day) / VERSION_LINK,
             *(_stable_link(output_dir, day, name) for name in (*DAY_DATASETS[1:], MANIFEST_NAME))]
    return [link for link in links if link.is_symlink() and not link.exists()]


def _check_version_entries(folder: Path, refuse: Callable[[Path, str], UserError]) -> None:
    """Refuse a version whose folder, ``.anchor``, dataset folders or manifest is a symlink.

    Publish makes every one of them real; the day's links go through them, so a symlink
    there (``.days/event_date=D/v -> ../event_date=D2/v2``, or an ``.anchor`` linked to
    D2's) passed the link-text checks and showed D2's figures under D's date."""
    if folder.is_symlink():
        raise refuse(folder, f"is a symlink to {os.readlink(folder)!r}, not a version folder")
    for name in (ANCHOR_DIR, *DAY_DATASETS, MANIFEST_NAME):
        entry = folder / name
        if entry.is_symlink():
            raise refuse(entry, f"is a symlink to {os.readlink(entry)!r}; a version holds real folders and files")


def check_day_layout(output_dir: Path, day: date | str) -> None:
    """Refuse, before anything of day D is touched, an entry of its outputs this product
    did not make: an anchor (``scores/event_date=D``) or its ``.version`` naming anything
    but an existing version under ``.days/event_date=D/``, a ``flagged``/``flagged_users``
    link or manifest link not going through the anchor, or a file where a folder belongs.
    Real folders and a real manifest file (the layout before versions) are fine: their
    files are adopted by hard links. Raises ForeignDayLayoutError naming the path."""
    versions = day_versions_dir(output_dir, day)
    anchor = _anchor(output_dir, day)
    hint = ("it was not made by uba-batch; move it away (restore the day's outputs as real folders or "
            "from a backup) and re-run")

    def refuse(path: Path, what: str) -> ForeignDayLayoutError:
        return ForeignDayLayoutError(f"{path} {what}: {hint}; the outputs of {_day_label(day)} were left as they are")

    if os.path.lexists(versions) and not _is_real_dir(versions):
        raise refuse(versions, "is not a real folder (a symlink could name another day's versions)")
    if anchor.is_symlink():
        text = os.readlink(anchor)
        version = _version_in(text, day, SCORES)
        if version is None or not (versions / version).is_dir():
            raise refuse(anchor, f"is a symlink to {text!r}, not to a version under {versions}")
        _check_version_entries(versions / version, refuse)
    elif _is_real_dir(anchor):
        link = anchor / VERSION_LINK
        if os.path.lexists(link) and not link.is_symlink():
            what = "folder" if link.is_dir() else "file"
            raise refuse(link, f"is a real {what} where the link to a version belongs (a copy made with "
                               "`cp -rL` or similar follows the links)")
        if os.path.lexists(link):
            text = os.readlink(link) if link.is_symlink() else ""
            version = _version_in(text, day, ANCHOR_DIR) if text else None
            if version is None or not (versions / version).is_dir():
                raise refuse(link, f"names {text!r}, not a version under {versions}")
            _check_version_entries(versions / version, refuse)
    elif os.path.lexists(anchor):
        raise refuse(anchor, "is not a folder")
    for name in (*DAY_DATASETS[1:], MANIFEST_NAME):
        link = _stable_link(output_dir, day, name)
        if link.is_symlink():
            text = os.readlink(link)
            if not _through_anchor(text, day, name):
                raise refuse(link, f"is a symlink to {text!r}, not through {anchor}")
        elif os.path.lexists(link) and name != MANIFEST_NAME and not _is_real_dir(link):
            raise refuse(link, "is not a folder")
        elif os.path.lexists(link) and name == MANIFEST_NAME and not link.is_file():
            raise refuse(link, "is not a file")


def _symlink_over(text: str, link: Path) -> None:
    """Make ``link`` a symlink to ``text`` in one rename(2) of a new symlink over it."""
    link.parent.mkdir(parents=True, exist_ok=True)
    tmp = link.parent / f"{TMP_PREFIX}link-{uuid.uuid4().hex}"
    os.symlink(text, tmp)
    try:
        os.replace(tmp, link)
    finally:
        if tmp.is_symlink():
            tmp.unlink()
    fsync_dir(link.parent)


def _dir_to_link(text: str, final: Path) -> None:
    """Replace a real directory by a symlink to ``text``: one RENAME_EXCHANGE where the
    kernel has it, else rename aside + rename in (undone by ``recover_replaced_dir``)."""
    tmp = final.parent / f"{TMP_PREFIX}link-{uuid.uuid4().hex}"
    os.symlink(text, tmp)
    try:
        if _rename_exchange(tmp, final):
            fsync_dir(final.parent)
            discard_dir(tmp)
            return
        aside = final.parent / f"{_aside_prefix(final)}{uuid.uuid4().hex}"
        os.replace(final, aside)
        os.replace(tmp, final)
        fsync_dir(final.parent)
        discard_dir(aside)
    finally:
        if tmp.is_symlink():
            tmp.unlink()


def _link_files(source: Path, target: Path) -> None:
    """Hard-link (copy where links are refused) the files of ``source`` into ``target``."""
    target.mkdir(parents=True, exist_ok=True)
    for path in sorted(source.iterdir()):
        if path.is_symlink() or not path.is_file() or path.name.startswith(TMP_PREFIX) \
                or (target / path.name).exists():
            continue
        try:
            os.link(path, target / path.name)
        except OSError:
            shutil.copy2(path, target / path.name)


def _is_real_dir(path: Path) -> bool:
    return path.is_dir() and not path.is_symlink()


def _prepare_version(folder: Path) -> None:
    """Give a version folder its empty ``.anchor`` and ``scores/.version -> ../.anchor``."""
    (folder / ANCHOR_DIR).mkdir(exist_ok=True)
    (folder / SCORES).mkdir(exist_ok=True)
    link = folder / SCORES / VERSION_LINK
    if not link.is_symlink():
        os.symlink(f"../{ANCHOR_DIR}", link)


def _new_version_dir(versions: Path, name: str, fill: Callable[[Path], None]) -> Path:
    """Build a version folder under a temporary name and rename it into place."""
    versions.mkdir(parents=True, exist_ok=True)
    tmp = versions / f"{TMP_PREFIX}{uuid.uuid4().hex}"
    tmp.mkdir()
    try:
        for dataset in DAY_DATASETS:
            (tmp / dataset).mkdir()
        fill(tmp)
        _prepare_version(tmp)
        os.replace(tmp, versions / name)
    finally:
        discard_dir(tmp)
    fsync_dir(versions)
    return versions / name


def _remove_entry(path: Path) -> None:
    """Delete a file, symlink or folder tree (what an exchange left where the new folder was)."""
    if path.is_symlink() or path.is_file():
        path.unlink(missing_ok=True)
    else:
        discard_dir(path)


def _side_entries(output_dir: Path, day: date | str, prefix: str) -> list[Path]:
    """``.days/<prefix>event_date=D-*`` entries (publish folders, set-aside anchors), oldest first."""
    base = Path(output_dir) / DAYS
    if not base.is_dir():
        return []
    start = f"{prefix}{PARTITION_COLUMN}={_day_label(day)}-"
    found = [p for p in base.iterdir() if p.name.startswith(start)]
    return sorted(found, key=lambda p: p.lstat().st_mtime_ns)


def _restore_anchor(output_dir: Path, day: date | str) -> bool:
    """Undo a commit cut between its two renames (filesystems without RENAME_EXCHANGE):
    the anchor set aside is renamed back when the anchor is missing. True if restored."""
    anchor = _anchor(output_dir, day)
    asides = _side_entries(output_dir, day, _ASIDE_PREFIX)
    restored = False
    if asides and not os.path.lexists(anchor):
        os.replace(asides.pop(), anchor)
        fsync_dir(anchor.parent)
        restored = True
    if os.path.lexists(anchor):
        for leftover in asides:
            _remove_entry(leftover)
    return restored


_CAN_EXCHANGE: dict[int, bool] = {}


def _can_exchange(folder: Path) -> bool:
    """Whether the filesystem of ``folder`` has RENAME_EXCHANGE (tried once per filesystem
    and process on two throw-away symlinks)."""
    device = folder.stat().st_dev
    if device not in _CAN_EXCHANGE:
        a, b = (folder / f"{TMP_PREFIX}probe-{uuid.uuid4().hex}" for _ in range(2))
        os.symlink("a", a)
        os.symlink("b", b)
        try:
            _CAN_EXCHANGE[device] = _rename_exchange(a, b)
        finally:
            a.unlink(missing_ok=True)
            b.unlink(missing_ok=True)
    return _CAN_EXCHANGE[device]


def _publish_anchor(output_dir: Path, day: date | str, version: str) -> None:
    """Make the anchor of D name ``version``, in one atomic step where the anchor exists.

    A finished folder (the version's scores parts, hard-linked, and ``.version``) is built
    under ``.days/`` (two levels below the output directory, as the anchor is, so the
    relative ``.version`` resolves the same there) and exchanged with the anchor; what it
    replaced is then deleted. Without RENAME_EXCHANGE the anchor becomes a symlink renamed
    over the old one (a real folder left by another filesystem is set aside first, the
    one step that is not atomic; ``_restore_anchor`` undoes it if cut).
    """
    anchor = _anchor(output_dir, day)
    target = day_versions_dir(output_dir, day) / version
    anchor.parent.mkdir(parents=True, exist_ok=True)
    (Path(output_dir) / DAYS).mkdir(exist_ok=True)
    if _can_exchange(Path(output_dir) / DAYS):  # probed there: nothing new appears under scores/
        folder = Path(output_dir) / DAYS / f"{_PUBLISH_PREFIX}{PARTITION_COLUMN}={_day_label(day)}-{uuid.uuid4().hex}"
        folder.mkdir()
        try:
            _link_files(target / SCORES, folder)
            os.symlink(_version_link_text(day, version), folder / VERSION_LINK)
            fsync_dir(folder)
            if not os.path.lexists(anchor):
                os.replace(folder, anchor)  # a first anchor: nothing to replace
                fsync_dir(anchor.parent)
                return
            if not _rename_exchange(folder, anchor):  # the commit point
                raise OSError(errno.EOPNOTSUPP, "RENAME_EXCHANGE refused", str(anchor))
            fsync_dir(anchor.parent)
            fsync_dir(folder.parent)
            return
        finally:
            if os.path.lexists(folder):
                _remove_entry(folder)  # what the exchange replaced, or the unused new folder
    text = _anchor_link_text(day, version)
    if anchor.is_symlink() or not os.path.lexists(anchor):
        _symlink_over(text, anchor)  # the commit point (no RENAME_EXCHANGE)
        return
    aside = Path(output_dir) / DAYS / f"{_ASIDE_PREFIX}{PARTITION_COLUMN}={_day_label(day)}-{uuid.uuid4().hex}"
    os.replace(anchor, aside)
    _symlink_over(text, anchor)
    _remove_entry(aside)


def ensure_day_links(output_dir: Path, day: date | str, on_step: Callable[[str], None] | None = None) -> None:
    """Make D's stable links exist, relative, before a version is committed, without
    changing what readers see.

    A day never published gets an empty version and an anchor naming it (so no link ever
    dangles). A day in the layout before versions (real ``scores/event_date=D`` without
    ``.version``, real dataset folders) is taken over: its files are hard-linked into a
    ``legacy-*`` version, ``.version`` naming it is added to the real scores folder, then
    each other real folder is exchanged for its link, so readers see the same old files
    throughout. A day whose links are absolute (the layout before relative links, which a
    moved output directory leaves dangling) gets them rewritten relative, one rename each,
    to the same version. A kill in between is finished by the next call. ``on_step`` is
    called after each step (fault-injection tests kill the process there).
    """
    step = on_step or (lambda name: None)
    anchor = _anchor(output_dir, day)
    versions = day_versions_dir(output_dir, day)
    manifest = run_manifest_path(output_dir, day)
    _restore_anchor(output_dir, day)
    recover_replaced_dir(anchor)
    check_day_layout(output_dir, day)
    if anchor.is_symlink():
        version = _version_in(os.readlink(anchor), day, SCORES)
        assert version is not None  # check_day_layout refused any other link
        if (versions / version).is_dir():
            _prepare_version(versions / version)
        if os.readlink(anchor) != _anchor_link_text(day, version):  # absolute, from the layout before
            _symlink_over(_anchor_link_text(day, version), anchor)
            step("link:scores")
    elif _is_real_dir(anchor):
        if not (anchor / VERSION_LINK).is_symlink():  # the layout before versions

            def fill(folder: Path) -> None:
                for dataset in DAY_DATASETS:
                    if _is_real_dir(partition_dir(output_dir, dataset, day)):
                        _link_files(partition_dir(output_dir, dataset, day), folder / dataset)
                if manifest.is_file() and not manifest.is_symlink():
                    os.link(manifest, folder / MANIFEST_NAME)

            name = f"{LEGACY_PREFIX}{uuid.uuid4().hex}"
            _new_version_dir(versions, name, fill)
            _symlink_over(_version_link_text(day, name), anchor / VERSION_LINK)
            step("link:scores")
    else:  # never published
        if not (versions / EMPTY_VERSION).is_dir():
            _new_version_dir(versions, EMPTY_VERSION, lambda folder: None)
        _publish_anchor(output_dir, day, EMPTY_VERSION)
        step("link:scores")
    current = versions / (published_version(output_dir, day) or EMPTY_VERSION)
    for name in (*DAY_DATASETS[1:], MANIFEST_NAME):
        link = _stable_link(output_dir, day, name)
        text = _link_text(day, name)
        recover_replaced_dir(link)
        if link.is_symlink():
            if os.readlink(link) == text:
                continue
            _symlink_over(text, link)  # an absolute link of the layout before: the same target
        elif _is_real_dir(link):
            _link_files(link, current / name)
            _dir_to_link(text, link)
        else:
            if link.is_file() and not (current / name).exists():  # the manifest before versions
                os.link(link, current / name)
            if name != MANIFEST_NAME and _is_real_dir(current) and not os.path.lexists(current / name):
                (current / name).mkdir()  # a dataset newer than the version (risk/): empty, never dangling
            _symlink_over(text, link)
        step(f"link:{name.removesuffix('.json')}")


def add_day_version(output_dir: Path, day: date | str, staged: Path, version: str) -> Path:
    """Move a finished staging folder (every dataset folder + manifest.json) into D's
    versions, recording the version it will replace; readers do not see it yet."""
    staged = Path(staged)
    for dataset in DAY_DATASETS:  # a dataset absent from the run is an empty folder, never missing
        (staged / dataset).mkdir(exist_ok=True)
    _prepare_version(staged)
    previous = published_version(output_dir, day) or ""
    (staged / PREVIOUS_NAME).write_text(previous + "\n")
    versions = day_versions_dir(output_dir, day)
    versions.mkdir(parents=True, exist_ok=True)
    os.replace(staged, versions / version)
    fsync_dir(versions)
    if staged.parent != versions:
        fsync_dir(staged.parent)
    return versions / version


def commit_day_version(output_dir: Path, day: date | str, version: str) -> None:
    """THE commit point of a day: one atomic step (RENAME_EXCHANGE of the anchor folder,
    or rename of the anchor symlink) makes ``version`` the published one, and with it
    every dataset and the manifest of D."""
    target = day_versions_dir(output_dir, day) / version
    if not (target / SCORES).is_dir():
        raise FileNotFoundError(errno.ENOENT, "no such day version", str(target))
    fault_point("publish", target)
    _publish_anchor(output_dir, day, version)


def prune_day_versions(output_dir: Path, day: date | str) -> list[str]:
    """Delete D's versions other than the published one and the one it replaced (kept so
    a reader that resolved the old links still finds its files until the next run); also
    what a killed run left (uncommitted versions, temporary folders, an unused publish
    folder or a replaced anchor). Returns the names removed. Call with the date's lock held."""
    _restore_anchor(output_dir, day)
    for leftover in _side_entries(output_dir, day, _PUBLISH_PREFIX):
        _remove_entry(leftover)
    versions = day_versions_dir(output_dir, day)
    current = published_version(output_dir, day)
    if current is None or not versions.is_dir():
        return []
    keep = {current}
    with contextlib.suppress(OSError):
        keep.add((versions / current / PREVIOUS_NAME).read_text().strip())
    removed = []
    for child in sorted(versions.iterdir()):
        if child.name not in keep:
            discard_dir(child) if child.is_dir() and not child.is_symlink() else child.unlink(missing_ok=True)
            removed.append(child.name)
    return removed


def latest_feedback(data_dir: Path) -> pl.LazyFrame:
    """One row per event with its most recent label (later parts, then later rows, win)."""
    parts = scan_table(data_dir, FEEDBACK)
    if parts is None:
        return pl.LazyFrame(schema=FEEDBACK_SCHEMA)
    return (
        _feedback_in_order(parts)
        .group_by("event_id", maintain_order=True)
        .agg(pl.all().last())
        .select(list(FEEDBACK_SCHEMA))
    )


def _feedback_in_order(parts: pl.LazyFrame) -> pl.LazyFrame:
    """Feedback rows in the order they were given: later parts, then later rows, come last."""
    return parts.sort(["_part", "recorded_at", "seq"])


VERDICT_SCHEMA: dict[str, pl.DataType] = {
    "event_id": pl.String(), "label": pl.String(), "source": pl.String(), "recorded_at": pl.Datetime("us", "UTC"),
}


_PENDING_PART = 2**62  # the ``_part`` of feedback rows not stored yet: after every stored part


def _latest_labels(data_dir: Path, pending: pl.DataFrame | None = None) -> list[tuple[str, str, str, datetime, int]]:
    """Per feedback id its latest (id, label, source, recorded_at, order): ``order`` ranks
    the label among all labels given, so the two ids of one event alert can be told
    which is later. ``pending`` rows (``FEEDBACK_SCHEMA``) count as a part stored last."""
    parts = scan_table(data_dir, FEEDBACK)
    if pending is not None:
        last = pending.lazy().with_columns(pl.lit(_PENDING_PART, dtype=pl.Int64).alias("_part"))
        parts = last if parts is None else pl.concat([parts, last], how="diagonal_relaxed")
    if parts is None:
        return []
    return (_feedback_in_order(parts).with_row_index("order")
            .group_by("event_id").agg(pl.col("label", "source", "recorded_at", "order").last())
            .select(*VERDICT_SCHEMA, "order").collect().rows())


def benign_verdicts(data_dir: Path, pending: pl.DataFrame | None = None) -> set[str]:
    """Ids (event ids or alert ids) whose analyst verdict in effect is benign: what entity
    risk leaves out and what baseline protection lets baselines learn. With ``pending``
    feedback rows: what it will be once they are stored (known before storing them)."""
    return set(verdicts_in_effect(data_dir, pending).filter(pl.col("label") == "benign")["event_id"])


def verdicts_in_effect(data_dir: Path, pending: pl.DataFrame | None = None) -> pl.DataFrame:
    """Per feedback id (``event_id``: an event id or an alert id) the analyst verdict in
    effect, with its ``source`` (``csv:<file>``, ``api``, ``triage:<alert id>``) and when it
    was given: what entity risk, training's ``--exclude-malicious`` and every alert view read.

    The latest label of an id wins; and an event alert has two ids, its event id and its
    alert id (``alert_id("event", event_id)``), so a verdict under one of them is about
    the same alert as one under the other: the later of the two is in effect for both.
    Without that, a benign verdict given by alert id (as the export names alerts) and a
    later malicious close (stored under the event id) left the alert out of entity risk
    for good. ``pending`` feedback rows count as stored last (see ``benign_verdicts``).
    """
    by_id = {row[0]: row for row in _latest_labels(data_dir, pending)}
    in_effect = {i: row[1:4] for i, row in by_id.items()}
    for event_id, row in by_id.items():
        other = by_id.get(alert_id("event", event_id))
        if other is not None:
            later = row if row[4] > other[4] else other
            in_effect[event_id] = in_effect[other[0]] = later[1:4]
    return pl.DataFrame([(i, *verdict) for i, verdict in in_effect.items()], schema=VERDICT_SCHEMA, orient="row")
