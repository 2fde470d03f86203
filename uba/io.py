"""The only module that touches files: storage layout, scans and atomic writes.

Layout (Hive-style, readable by Polars, DuckDB, Spark and Arrow as-is)::

    <data-dir>/events/event_date=YYYY-MM-DD/*.parquet
    <data-dir>/quarantine/event_date=YYYY-MM-DD|unknown/*.parquet
    <data-dir>/aggregates/event_date=YYYY-MM-DD/*.parquet
    <output-dir>/{scores,flagged,flagged_users}/event_date=YYYY-MM-DD/*.parquet
    <output-dir>/runs/event_date=YYYY-MM-DD/manifest.json
    <output-dir>/.days/event_date=YYYY-MM-DD/<version>/...   what the day's links resolve to
    <data-dir>/.checksums/{events,aggregates}/event_date=YYYY-MM-DD/<part>.json   sha256 records

A scored day's datasets and manifest are symlinks that all resolve through one anchor,
``scores/event_date=D``, so one rename publishes the whole day (see the section
"published days" below).

Every write goes to a temporary name in the destination directory and is renamed
into place, so a reader (or a crash) never sees half a file.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import io
import json
import os
import shutil
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterable
from datetime import date
from pathlib import Path
from typing import Any

import polars as pl

from uba.errors import BundleError, UserError
from uba.schema import EVENT_SCHEMA, PARTITION_COLUMN

EVENTS = "events"
QUARANTINE = "quarantine"
AGGREGATES = "aggregates"
LABELS = "labels"
SCORES = "scores"
FLAGGED = "flagged"
RUNS = "runs"
TMP_PREFIX = ".tmp-"
# Test hook (never set in production): the write of this kind fails with ENOSPC, as a
# full disk would make it. Kinds: staged_part, baseline_snapshot, aggregates, events,
# publish, manifest (see fault_point).
FAULT_ENOSPC_ENV = "UBA_FAULT_ENOSPC_AT"


class CorruptPartError(UserError):
    """A stored Parquet part whose bytes are not the ones that were written (or unreadable)."""


def fault_point(kind: str, path: Path | str = "") -> None:
    """Raise ENOSPC here when ``UBA_FAULT_ENOSPC_AT`` names ``kind`` (fault-injection tests)."""
    if os.environ.get(FAULT_ENOSPC_ENV) == kind:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))


def os_error_reason(exc: BaseException) -> str | None:
    """One line saying why a file operation failed, from an OSError or a Polars/Arrow IO
    error (Polars reports ENOSPC as a ComputeError); None when ``exc`` is neither."""
    if isinstance(exc, OSError) and exc.errno:
        name = errno.errorcode.get(exc.errno, "")
        text = exc.strerror or str(exc)
        where = f" ({exc.filename})" if exc.filename else ""
        return f"{text} [{name}]{where}" if name else f"{text}{where}"
    text = str(exc).strip()
    if isinstance(exc, pl.exceptions.PolarsError) and "os error" in text:
        first = text.splitlines()[0]
        return first.rsplit("IO error: ", 1)[-1]
    return None


def partition_dir(root: Path, dataset: str, day: date | str) -> Path:
    """Directory of one Hive partition, e.g. ``root/events/event_date=2026-03-01``."""
    label = day.isoformat() if isinstance(day, date) else day
    return Path(root) / dataset / f"{PARTITION_COLUMN}={label}"


def partition_files(root: Path, dataset: str, day: date | str) -> list[Path]:
    """Finished Parquet parts of one partition (temporary files are never listed)."""
    folder = partition_dir(root, dataset, day)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.glob("*.parquet") if not p.name.startswith(TMP_PREFIX))


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
            day = date.fromisoformat(label)
        except ValueError:
            continue
        if finished(child):
            found.append(day)
    return sorted(found)


def partition_dates(root: Path, dataset: str) -> list[date]:
    """Dates that have at least one finished part, ascending; 'unknown' is skipped."""
    return dated_dirs(Path(root) / dataset, PARTITION_COLUMN,
                      lambda folder: any(not p.name.startswith(TMP_PREFIX) for p in folder.glob("*.parquet")))


def scan_partition(root: Path, dataset: str, day: date | str) -> pl.LazyFrame | None:
    """Lazy scan of one partition's parts, or None when the partition has none."""
    files = partition_files(root, dataset, day)
    if not files:
        return None
    return pl.scan_parquet(files)


def scan_events(data_dir: Path, day: date) -> pl.LazyFrame:
    """Validated events of one day, in the stored schema; a missing day is a user error."""
    lf = scan_partition(data_dir, EVENTS, day)
    if lf is None:
        raise UserError(
            f"no events partition for {day.isoformat()} under {Path(data_dir) / EVENTS} "
            "(ingest or generate that day first)"
        )
    for part in partition_files(data_dir, EVENTS, day):
        _check_event_part(part)
    return lf.select(list(EVENT_SCHEMA))


def _check_event_part(part: Path) -> None:
    """Refuse a truncated or foreign part up front, naming it, rather than failing mid-query.

    Reading a Parquet footer costs microseconds; a corrupt part found by the engine
    later surfaces as an internal error without the file's name.
    """
    try:
        schema = pl.read_parquet_schema(part)
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise CorruptPartError(f"events part {part} is not a readable Parquet file: {exc}") from exc
    missing = [name for name in EVENT_SCHEMA if name not in schema]
    if missing:
        raise UserError(f"events part {part} lacks columns {missing}: it was not written by ingest")


def scan_partitions(root: Path, dataset: str, days: Iterable[date]) -> pl.LazyFrame | None:
    """Lazy scan over the parts of several partitions (missing days are skipped)."""
    files = [f for day in days for f in partition_files(root, dataset, day)]
    if not files:
        return None
    return pl.scan_parquet(files)


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


def _write_atomic(path: Path, write: Callable[[Path], None], durable: bool = False,
                  make_parent: bool = True, checksum_for: Path | None = None) -> Path:
    """The one write-then-rename routine: ``write`` fills a temporary file beside ``path``.

    ``durable`` adds the fsyncs that make the rename survive a power cut (data parts);
    exports and reports only need readers never to see half a file. ``make_parent``
    False makes a missing folder an error instead of creating it (see write_staged_part).
    ``checksum_for`` records the finished file's sha256 for the part that will live at
    that path (see ``record_checksum``), before the file is renamed into place, so a
    checksummed part never exists without its record.
    """
    path = Path(path)
    if make_parent:
        path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_path(path.parent, path.suffix)
    try:
        try:
            write(tmp)
        except Exception as exc:
            # Polars 2.1 reports a full disk as "Invalid thrift: transport error", without the
            # OS error: ask the filesystem, with the partial file still holding its space.
            if not isinstance(exc, OSError) and disk_full(path.parent):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path)) from exc
            raise
        if durable:
            with open(tmp, "rb+") as handle:
                os.fsync(handle.fileno())
        if checksum_for is not None:
            record_checksum(tmp, checksum_for)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    if durable:
        fsync_dir(path.parent)
    return path


def write_parquet_atomic(df: pl.DataFrame, path: Path) -> Path:
    """Write ``df`` to ``path`` via a temporary file and rename, so the part is whole or absent.

    A part of an events or aggregates partition (``<dataset>/event_date=*/``) gets its
    checksum recorded before the rename (``record_checksum``).
    """
    path = Path(path)
    checksummed = path.parent.parent.name in CHECKSUMMED and path.parent.name.startswith(f"{PARTITION_COLUMN}=")
    return _write_atomic(path, lambda tmp: df.write_parquet(tmp, compression="zstd", statistics=True),
                         durable=True, checksum_for=path if checksummed else None)


def write_staged_part(df: pl.DataFrame, path: Path) -> Path:
    """Write a shard's part into a staging folder that must already exist.

    The driver creates a run's staging folders and removes them when the run ends; a
    shard task orphaned by a killed driver must then fail, not re-create the folder of a
    run that no longer exists.
    """
    fault_point("staged_part", path)
    return _write_atomic(path, lambda tmp: df.write_parquet(tmp, compression="zstd", statistics=True),
                         durable=True, make_parent=False)


def write_part(df: pl.DataFrame, root: Path, dataset: str, day: date | str, name: str | None = None) -> Path:
    """Add one part to a partition; ``name`` makes the write deterministic (e.g. a content hash).

    Parts of events and aggregates get their sha256 recorded (``record_checksum``).
    """
    part = name or f"part-{uuid.uuid4().hex}"
    path = partition_dir(root, dataset, day) / f"{part}.parquet"
    if dataset == EVENTS:
        fault_point("events", path)
    return write_parquet_atomic(df, path)


def remove_part(path: Path) -> None:
    """Delete a part written by ``write_part`` (a failed batch) and its checksum record."""
    Path(path).unlink(missing_ok=True)
    checksum_path(path).unlink(missing_ok=True)


# --- stored-data integrity (issue 11, item 7): a sha256 per events and aggregates part ---

CHECKSUMS = ".checksums"
CHECKSUMMED = frozenset({EVENTS, AGGREGATES})
_VERIFIED: dict[tuple[str, int, int, int, int], str] = {}
_VERIFIED_MAX = 50_000


def checksum_path(part: Path) -> Path:
    """Where the checksum of ``root/<dataset>/<partition>/<name>`` is recorded:
    ``root/.checksums/<dataset>/<partition>/<name>.json``.

    Outside the dataset folders: Polars' directory scan (``scan_parquet('events/')``) reads
    every file below the folder, hidden ones included, and refuses mixed extensions.
    """
    part = Path(part)
    return part.parents[2] / CHECKSUMS / part.parent.parent.name / part.parent.name / f"{part.name}.json"


def record_checksum(written: Path, part: Path) -> Path:
    """Record the sha256 and size of ``written`` (a finished file) as those of ``part``."""
    record = {"format": 1, "sha256": file_sha256(written), "size": Path(written).stat().st_size}
    target = checksum_path(part)
    text = json.dumps(record, sort_keys=True) + "\n"
    return _write_atomic(target, lambda tmp: tmp.write_text(text), durable=True)


def _recorded_checksum(part: Path) -> dict[str, Any] | None:
    try:
        record = json.loads(checksum_path(part).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise CorruptPartError(f"the checksum record of {part} is unreadable ({checksum_path(part)}: "
                               f"{exc}); the part cannot be verified") from exc
    if not isinstance(record, dict) or not isinstance(record.get("sha256"), str):
        raise CorruptPartError(f"the checksum record of {part} is malformed ({checksum_path(part)})")
    return record


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
    """Check a stored part against the sha256 recorded when it was written.

    Returns True when it matched, False when the part has no record (written before
    checksums existed: unverified, read as before). A mismatch (a flipped byte, a
    truncated or replaced file) raises CorruptPartError naming the file, in one line.
    Hashes once per process per (inode, size, mtime), so a worker reading several
    pieces of one file, or the aggregates of the same days again, pays once.
    """
    part = Path(part)
    record = _recorded_checksum(part)
    if record is None:
        return False
    try:
        info = part.stat()
    except OSError as exc:
        raise CorruptPartError(f"{_kind(part)} part {part} cannot be read: {exc.strerror or exc}") from exc
    hint = f"; {remedy}" if remedy else ""
    if info.st_size != record.get("size", info.st_size):
        raise CorruptPartError(f"{_kind(part)} part {part} is corrupt: {info.st_size} bytes, "
                               f"{record['size']} were written (truncated or replaced){hint}")
    digest = _sha256_cached(part, info)
    if digest != record["sha256"]:
        raise CorruptPartError(f"{_kind(part)} part {part} is corrupt: its sha256 {digest[:16]}... is not "
                               f"the {record['sha256'][:16]}... recorded when it was written{hint}")
    return True


def part_intact(part: Path) -> bool:
    """True when ``part`` matches its checksum record, or (no record) its Parquet footer reads."""
    try:
        if verify_part(part):
            return True
        pl.read_parquet_schema(part)
    except (CorruptPartError, pl.exceptions.PolarsError, OSError):
        return False
    return True


def verify_partition(root: Path, dataset: str, day: date | str, remedy: str = "") -> None:
    """``verify_part`` on every part of one partition."""
    for part in partition_files(root, dataset, day):
        verify_part(part, remedy)


def _kind(part: Path) -> str:
    dataset = part.parent.parent.name
    return {EVENTS: "events", AGGREGATES: "aggregates"}.get(dataset, dataset)


def _drop_stale_checksums(final: Path) -> None:
    """Remove the checksum records of parts no longer in a replaced partition."""
    folder = checksum_path(final / "x").parent
    if not folder.is_dir():
        return
    names = {p.name for p in final.glob("*.parquet")}
    for record in folder.glob("*.json"):  # not another writer's temporary file
        if not record.name.startswith(TMP_PREFIX) and record.name.removesuffix(".json") not in names:
            record.unlink(missing_ok=True)


def write_json_atomic(data: Any, path: Path, durable: bool = False) -> Path:
    """JSON with the same all-or-nothing guarantee as the Parquet writer (``durable``: fsynced)."""
    text = json.dumps(data, indent=2, sort_keys=True, default=str) + "\n"
    return _write_atomic(path, lambda tmp: tmp.write_text(text), durable=durable)


def read_json(path: Path) -> Any:
    """Read a JSON file, turning a missing or corrupt file into a user error."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError as exc:
        raise UserError(f"file not found: {path}") from exc
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"cannot read JSON file {path}: {exc}") from exc


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


def partition_row_count(root: Path, dataset: str, day: date | str) -> int:
    """Rows in one partition from the Parquet footers only (0 when the partition is absent)."""
    lf = scan_partition(root, dataset, day)
    if lf is None:
        return 0
    return int(lf.select(pl.len()).collect().item())


# --- operations (issue 7): feedback, suppressions, user-day alerts, manifests, reports ---

FEEDBACK = "feedback"
SUPPRESSIONS = "suppressions"
FLAGGED_USERS = "flagged_users"
MANIFEST_NAME = "manifest.json"


def read_csv_as_strings(path: Path) -> pl.DataFrame:
    """A small analyst CSV with every cell as text, so validation (not the reader) decides what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"file not found: {path}")
    try:
        return pl.read_csv(path, infer_schema=False, raise_if_empty=False)
    except (pl.exceptions.ComputeError, OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read CSV file {path}: {exc}") from exc


def append_table_part(df: pl.DataFrame, root: Path, table: str) -> Path:
    """Add one part to an append-only table (``root/table/part-*.parquet``); nothing is ever rewritten.

    The name starts with a UTC timestamp so listing order is write order.
    """
    from datetime import UTC, datetime

    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    return write_parquet_atomic(df, Path(root) / table / f"part-{stamp}-{uuid.uuid4().hex[:8]}.parquet")


def table_part_files(root: Path, table: str) -> list[Path]:
    """Finished parts of an append-only table, in write order."""
    folder = Path(root) / table
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.glob("part-*.parquet") if not p.name.startswith(TMP_PREFIX))


def scan_table(root: Path, table: str) -> pl.LazyFrame | None:
    """Lazy scan of an append-only table, each row tagged with its part's ``_part`` order; None when empty."""
    files = table_part_files(root, table)
    if not files:
        return None
    return pl.concat(
        [pl.scan_parquet(f).with_columns(pl.lit(i, dtype=pl.Int64).alias("_part")) for i, f in enumerate(files)],
        how="diagonal_relaxed",
    )


def replace_partition(df: pl.DataFrame, root: Path, dataset: str, day: date | str, name: str = "part-0") -> Path:
    """Make ``df`` the whole content of one partition, swapped in atomically (re-runs replace, never add).

    Events and aggregates parts get their checksum recorded (under the final name) first.
    """
    final = partition_dir(root, dataset, day)
    staging = make_staging_dir(final.parent)
    checksum = final / f"{name}.parquet" if dataset in CHECKSUMMED else None
    if final.is_symlink():  # a dataset of a published day: replace the folder of its current version
        final = Path(os.path.realpath(final))
    try:
        _write_atomic(staging / f"{name}.parquet",
                      lambda tmp: df.write_parquet(tmp, compression="zstd", statistics=True),
                      durable=True, checksum_for=checksum)
        recover_replaced_dir(final)
        replace_dir_atomic(staging, final)
    finally:
        discard_dir(staging)
    if checksum is not None:
        _drop_stale_checksums(final)
    return final / f"{name}.parquet"


def run_manifest_path(output_dir: Path, day: date) -> Path:
    """Where the score run of ``day`` writes its manifest."""
    return partition_dir(output_dir, RUNS, day) / MANIFEST_NAME


def run_manifest_dates(output_dir: Path) -> list[date]:
    """Days that have a finished run manifest, ascending."""
    return dated_dirs(Path(output_dir) / RUNS, PARTITION_COLUMN, lambda folder: (folder / MANIFEST_NAME).is_file())


def read_run_manifest(output_dir: Path, day: date) -> dict[str, Any] | None:
    """The manifest of ``day``'s run, or None when that day was never scored."""
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


# --- generate (issue 2): raw-event exports in the formats ingest reads ---


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
        return pl.read_parquet(path)
    except (pl.exceptions.ComputeError, OSError) as exc:
        raise UserError(f"cannot read Parquet file {path}: {exc}") from exc

# --- ingest (issue 2): raw input files, stored event ids, run summaries ---

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
    import fnmatch

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
    from collections import deque

    found: list[str] = []
    seen: set[tuple[int, int]] = set()
    real, linked = deque([top]), deque()
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


def expand_inputs(patterns: Iterable[str]) -> list[Path]:
    """Files named by paths or globs, in the order given (each glob sorted), each file once.

    A glob matching nothing, a missing path or a directory is a user error, checked before
    anything is ingested so a typo never leaves a half-done run. A file reached by two
    paths (a symlink, a hard link, two globs) is read once, under the first path.
    """
    found: list[Path] = []
    seen: set[tuple[int, int] | Path] = set()
    for pattern in patterns:
        if _GLOB_CHARS & set(pattern) and not Path(pattern).is_file():  # 'export [1].csv' is a file
            matches = _glob_files(pattern)
            if not matches:
                raise UserError(f"no files match {pattern!r}")
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


def open_input(path: Path) -> Any:
    """Binary reader for an input file, decompressing ``.gz`` on the fly."""
    import gzip

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


def iter_parquet_batches(path: Path, batch_rows: int) -> Iterable[pl.DataFrame]:
    """Row batches of a Parquet file as read (types untouched), one row group slice at a time."""
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except Exception as exc:
        raise UserError(f"cannot read {path} as parquet: {exc}") from exc
    with parquet:
        for batch in parquet.iter_batches(batch_size=batch_rows):
            yield pl.from_arrow(batch)  # type: ignore[misc]


def scan_event_ids(data_dir: Path, days: Iterable[date]) -> pl.LazyFrame | None:
    """``event_id`` and ``event_date`` of the events stored for ``days`` (None when none are).

    Only the id column is read, so a duplicate check costs a fraction of the stored data.
    """
    frames = [
        pl.scan_parquet(files).select(pl.col("event_id"), pl.lit(day, pl.Date).alias(PARTITION_COLUMN))
        for day in days
        if (files := partition_files(data_dir, EVENTS, day))
    ]
    return pl.concat(frames) if frames else None


def ingest_run_path(data_dir: Path, run_id: str) -> Path:
    """Where the summary of one ingest run is kept: ``<data-dir>/ingest_runs/<run_id>.json``."""
    return Path(data_dir) / INGEST_RUNS / f"{run_id}.json"


# --- features (issue 3): daily aggregates and baseline snapshots ---

BASELINES = "baselines"
BASELINE_SNAPSHOT_NAME = "baselines.parquet"
AGGREGATE_PART_PREFIX = "part-"


def partition_fingerprint(root: Path, dataset: str, day: date | str) -> str | None:
    """Short hash of a partition's part names and sizes (None when it has no parts).

    Parts are written once under unique names and never edited in place, so a changed
    name/size list means the partition's content changed (e.g. a later ingest added a part).
    """
    files = partition_files(root, dataset, day)
    if not files:
        return None
    digest = hashlib.sha256()
    for path in files:
        digest.update(f"{path.name}\0{path.stat().st_size}\n".encode())
    return digest.hexdigest()[:16]


def aggregates_tag(data_dir: Path, day: date) -> str | None:
    """Tag of the finished aggregates part of ``day`` (its name minus prefix), or None."""
    files = partition_files(data_dir, AGGREGATES, day)
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
    lists are stacked with missing count columns as null.
    """
    paths = [(day, path) for day in sorted(set(days)) for path in partition_files(data_dir, AGGREGATES, day)]
    for _, path in paths:  # small files (one row per user), hashed once per process
        verify_part(path, AGGREGATES_REMEDY)
        _check_readable(path)
    frames = [pl.scan_parquet(path).with_columns(pl.lit(day, dtype=pl.Date).alias(PARTITION_COLUMN))
              for day, path in paths]
    if not frames:
        return None
    return pl.concat(frames, how="diagonal_relaxed")


AGGREGATES_REMEDY = ("aggregates are derived from the day's events: delete the part and re-run to "
                     "rebuild it (score and train do so by themselves while the events are there)")


def _check_readable(part: Path) -> None:
    """A part without a checksum record (written before them) that is not Parquet: one line."""
    try:
        pl.read_parquet_schema(part)
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise CorruptPartError(f"{_kind(part)} part {part} is not a readable Parquet file: "
                               f"{str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}"
                               ) from exc


def baseline_snapshot_path(data_dir: Path, as_of: date) -> Path:
    """``<data-dir>/baselines/as_of=YYYY-MM-DD/baselines.parquet``."""
    return Path(data_dir) / BASELINES / f"as_of={as_of.isoformat()}" / BASELINE_SNAPSHOT_NAME


def write_baseline_snapshot(df: pl.DataFrame, data_dir: Path, as_of: date) -> Path:
    """Write (or atomically replace) the baseline snapshot for ``as_of``."""
    fault_point("baseline_snapshot", baseline_snapshot_path(data_dir, as_of))
    return write_parquet_atomic(df, baseline_snapshot_path(data_dir, as_of))


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
        return pl.read_parquet(path)
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise UserError(f"cannot read baseline snapshot {path}: {exc}") from exc


# --- operations (issue 7): per-user score history of a bundle ---


def user_score_history_path(bundle_path: Path, quantile: float) -> Path:
    return Path(bundle_path) / f"user_scores-q{quantile:.4f}.parquet"


# Cap on the per-user table read back (a row per user of a few dozen bytes): a million
# users is ~20 MB, so the cap only stops a file that was never this table.
MAX_USER_HISTORY_BYTES = 256 << 20


def read_user_score_history(bundle_path: Path, quantile: float) -> pl.DataFrame | None:
    """A bundle's per-user score table for ``quantile`` (derived data, outside the checksums), or None.

    Read with the bundle guards (``uba.artifacts.read_bundle_file``): a regular file
    inside the bundle directory once links are resolved, at most
    ``MAX_USER_HISTORY_BYTES``, never a FIFO or device, and parsed from the very bytes
    that were checked. Anything refused or unreadable raises
    :class:`uba.errors.BundleError` naming the file, never quoting it.
    """
    from uba.artifacts import read_bundle_file  # uba.artifacts imports this module

    path = user_score_history_path(bundle_path, quantile)
    if not os.path.lexists(path):
        return None
    data = read_bundle_file(path, Path(bundle_path), MAX_USER_HISTORY_BYTES)
    try:
        return pl.read_parquet(io.BytesIO(data))
    except Exception as exc:  # any Polars/Arrow error on damaged bytes: named by type, never by content
        raise BundleError(f"{path}: not a readable Parquet table ({type(exc).__name__})") from exc


def write_user_score_history(df: pl.DataFrame, bundle_path: Path, quantile: float) -> Path:
    """Store the per-user score table next to the bundle files it was derived from."""
    return write_parquet_atomic(df, user_score_history_path(bundle_path, quantile))


# --- published days (issue 11, item 6): one rename commits a whole day ---
#
#   <out>/.days/event_date=D/<version>/{scores,flagged,flagged_users}/part-*.parquet
#   <out>/.days/event_date=D/<version>/manifest.json          (+ .previous: the version it replaced)
#   <out>/scores/event_date=D        -> <abs out>/.days/event_date=D/<version>/scores   (the anchor)
#   <out>/flagged/event_date=D       -> <abs out>/scores/event_date=D/../flagged
#   <out>/flagged_users/event_date=D -> <abs out>/scores/event_date=D/../flagged_users
#   <out>/runs/event_date=D/manifest.json -> <abs out>/scores/event_date=D/../manifest.json
#
# The kernel resolves ``..`` after following the anchor physically (to the version
# folder), so every dataset and the manifest of D are reached through the anchor: a
# rename(2) of a new symlink over it switches them all at once. Only the anchor names a
# version, so a ``cp -r scores/`` keeps pointing at the version it copied (kept until the
# run after next prunes it); the other links never change once made.

DAYS = ".days"
DAY_DATASETS: tuple[str, ...] = (SCORES, FLAGGED, FLAGGED_USERS)  # risk/ joins here when it exists
EMPTY_VERSION = "empty"
PREVIOUS_NAME = ".previous"
LEGACY_PREFIX = "legacy-"


def day_versions_dir(output_dir: Path, day: date | str) -> Path:
    """``<out>/.days/event_date=D``: every kept version of day D's outputs."""
    label = day.isoformat() if isinstance(day, date) else day
    return Path(output_dir) / DAYS / f"{PARTITION_COLUMN}={label}"


def _absolute(path: Path) -> Path:
    return Path(os.path.abspath(path))


def _anchor(output_dir: Path, day: date | str) -> Path:
    return partition_dir(output_dir, SCORES, day)


def _link_text(output_dir: Path, day: date | str, name: str) -> str:
    """What the stable link of ``name`` (a dataset or manifest.json) points at."""
    if name == SCORES:
        raise ValueError("the anchor names a version")
    return f"{_absolute(_anchor(output_dir, day))}/../{name}"


def _stable_link(output_dir: Path, day: date | str, name: str) -> Path:
    if name == MANIFEST_NAME:
        return run_manifest_path(output_dir, day)
    return partition_dir(output_dir, name, day)


def published_version(output_dir: Path, day: date | str) -> str | None:
    """The version of D that readers see (the anchor's target), None when D has no
    versioned output (never scored, or still in the layout before versions)."""
    anchor = _anchor(output_dir, day)
    if not anchor.is_symlink():
        return None
    return Path(os.readlink(anchor)).parent.name


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
        if not path.is_file() or path.name.startswith(TMP_PREFIX) or (target / path.name).exists():
            continue
        try:
            os.link(path, target / path.name)
        except OSError:
            shutil.copy2(path, target / path.name)


def _is_real_dir(path: Path) -> bool:
    return path.is_dir() and not path.is_symlink()


def _new_version_dir(versions: Path, name: str, fill: Callable[[Path], None]) -> Path:
    """Build a version folder under a temporary name and rename it into place."""
    versions.mkdir(parents=True, exist_ok=True)
    tmp = versions / f"{TMP_PREFIX}{uuid.uuid4().hex}"
    tmp.mkdir()
    try:
        for dataset in DAY_DATASETS:
            (tmp / dataset).mkdir()
        fill(tmp)
        os.replace(tmp, versions / name)
    finally:
        discard_dir(tmp)
    fsync_dir(versions)
    return versions / name


def ensure_day_links(output_dir: Path, day: date | str, on_step: Callable[[str], None] | None = None) -> None:
    """Make D's stable links exist before a version is committed, without changing what
    readers see.

    A day never published gets an empty version and links to it (so no link ever
    dangles). A day in the layout before versions (real ``scores/event_date=D`` etc.) is
    taken over: its files are hard-linked into a ``legacy-*`` version, then each real
    folder (the anchor first) is exchanged for its link, so readers see the same old
    files throughout; a kill in between is finished by the next call. ``on_step`` is
    called after each step (fault-injection tests kill the process there).
    """
    step = on_step or (lambda name: None)
    anchor = _anchor(output_dir, day)
    versions = day_versions_dir(output_dir, day)
    manifest = run_manifest_path(output_dir, day)
    recover_replaced_dir(anchor)
    if not anchor.is_symlink():
        legacy = _is_real_dir(anchor)

        def fill(folder: Path) -> None:
            for dataset in DAY_DATASETS:
                if _is_real_dir(partition_dir(output_dir, dataset, day)):
                    _link_files(partition_dir(output_dir, dataset, day), folder / dataset)
            if manifest.is_file() and not manifest.is_symlink():
                os.link(manifest, folder / MANIFEST_NAME)

        name = f"{LEGACY_PREFIX}{uuid.uuid4().hex}" if legacy else EMPTY_VERSION
        if legacy or not (versions / name).is_dir():
            _new_version_dir(versions, name, fill)
        text = str(_absolute(versions / name / SCORES))
        if legacy:
            _dir_to_link(text, anchor)
        else:
            _symlink_over(text, anchor)
        step("link:scores")
    current = Path(os.path.realpath(anchor)).parent
    for dataset in DAY_DATASETS[1:]:
        link = partition_dir(output_dir, dataset, day)
        recover_replaced_dir(link)
        if link.is_symlink():
            continue
        if _is_real_dir(link):
            _link_files(link, current / dataset)
            _dir_to_link(_link_text(output_dir, day, dataset), link)
        else:
            _symlink_over(_link_text(output_dir, day, dataset), link)
        step(f"link:{dataset}")
    if not manifest.is_symlink():
        if manifest.is_file() and not (current / MANIFEST_NAME).exists():
            os.link(manifest, current / MANIFEST_NAME)
        _symlink_over(_link_text(output_dir, day, MANIFEST_NAME), manifest)
        step("link:manifest")


def add_day_version(output_dir: Path, day: date | str, staged: Path, version: str) -> Path:
    """Move a finished staging folder (every dataset folder + manifest.json) into D's
    versions, recording the version it will replace; readers do not see it yet."""
    staged = Path(staged)
    for dataset in DAY_DATASETS:  # a dataset absent from the run is an empty folder, never missing
        (staged / dataset).mkdir(exist_ok=True)
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
    """THE commit point of a day: one rename(2) points the anchor at ``version``, and with
    it every dataset and the manifest of D."""
    target = day_versions_dir(output_dir, day) / version
    if not (target / SCORES).is_dir():
        raise FileNotFoundError(errno.ENOENT, "no such day version", str(target))
    fault_point("publish", target)
    _symlink_over(str(_absolute(target / SCORES)), _anchor(output_dir, day))


def prune_day_versions(output_dir: Path, day: date | str) -> list[str]:
    """Delete D's versions other than the published one and the one it replaced (kept so
    a reader, or a copy of ``scores/``, that resolved the old links still finds its
    files until the next run); also what a killed run left (uncommitted versions,
    temporary folders). Returns the names removed. Call with the date's lock held."""
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
