"""The optional user directory: who each user is (department, role, privilege, criticality).

Detection works without it. With it, entity risk can weigh a privileged or critical
user more, and peer groups can be formed from departments and roles. It is imported
from an HR or IdP export (CSV or Parquet) by ``uba-batch users import`` and stored as
one table, ``<data-dir>/directory/users.parquet``, replaced atomically by each import.

Every input row is accounted for, as ingest does for events: a valid row is stored
(a later import replaces the stored row of the same user, but for the columns its file
lacks, which keep their stored values), a bad one goes to
``<data-dir>/directory/quarantine/`` with its line and the reason, naming the field and
the value.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn, TypedDict

import polars as pl

from uba import event_rules as rules
from uba import io
from uba.errors import UserError
from uba.manifest import DirectoryCoverage

DIRECTORY = "directory"
USERS_FILE = "users.parquet"
QUARANTINE = "quarantine"
TYPE_ERROR = "_user_id_type_error"  # why a typed user_id cannot be an id (Parquet); not a column of the file
COLUMNS = ("user_id", "department", "role", "is_privileged", "criticality")
CRITICALITY = ("low", "medium", "high", "critical")
TRUE_WORDS = frozenset({"true", "1", "yes", "y", "t"})
FALSE_WORDS = frozenset({"false", "0", "no", "n", "f", ""})
MAX_NAME_LENGTH = 128  # department and role
MAX_PARQUET_ROWS = 5_000_000
SCHEMA: dict[str, pl.DataType] = {
    "user_id": pl.String(),
    "department": pl.String(),
    "role": pl.String(),
    "is_privileged": pl.Boolean(),
    "criticality": pl.String(),
}
QUARANTINE_SCHEMA: dict[str, pl.DataType] = {
    "source": pl.String(), "line": pl.Int64(), "reason": pl.String(),
    **{c: pl.String() for c in COLUMNS},
}


class DirectoryRow(TypedDict):
    """One stored directory row (the columns of ``SCHEMA``), as ``check_row`` normalises it."""

    user_id: str
    department: str | None
    role: str | None
    is_privileged: bool
    criticality: str | None


@dataclass(frozen=True)
class ImportSummary:
    """What one import did with every row of its file."""

    rows_read: int
    rows_stored: int
    rows_quarantined: int
    users_total: int
    reasons: dict[str, int]
    path: Path
    quarantine_path: Path | None
    ignored_columns: tuple[str, ...] = ()  # columns of the file that are not directory columns
    rows_blank: int = 0  # rows of the file with no value at all (blank lines, ",,,,"): skipped
    kept_columns: tuple[str, ...] = ()  # directory columns the file lacks: stored values kept

    @property
    def quarantined_ratio(self) -> float:
        rows = self.rows_read - self.rows_blank
        return self.rows_quarantined / rows if rows else 0.0

    def quarantine_exceeded(self, limit: float) -> bool:
        """Stored what it could, but too much went to quarantine for the run to count as a
        success (a wrong export): the same limit as ingest (ingest.max_quarantine_ratio)."""
        return self.quarantined_ratio > limit


def directory_path(data_dir: Path) -> Path:
    return Path(data_dir) / DIRECTORY / USERS_FILE


def stored_directory_file(data_dir: Path) -> Path | None:
    """The stored directory's file, None when no directory is stored.

    Something else in its place (a folder, a FIFO, a link whose target is gone, e.g. an
    HR share that is not mounted) is a user error naming it: taken for "no directory",
    scoring went on without peer groups or privilege weights, a bundle trained with a
    directory was refused as if none had been imported, and an import failed with a
    traceback when it came to replace it."""
    path = directory_path(data_dir)
    if path.is_file():
        return path
    if not os.path.lexists(path):
        return None
    raise UserError(f"{path} is not a regular file (a folder, FIFO or link to nothing is in its place): the user "
                    "directory cannot be read there; remove it, then import the directory again "
                    "(uba-batch users import FILE)")


def _text(value: object, field: str, max_length: int) -> str | None:
    """Optional text: empty is null; control or invisible characters are refused."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        return rules.check_id(value, max_length)
    except rules.RuleError as exc:
        raise ValueError(f"{field} {exc.message}") from None


def _privileged(value: object) -> bool:
    word = "" if value is None else str(value).strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise ValueError(f"is_privileged {str(value)[:40]!r} is not true or false")


def _criticality(value: object) -> str | None:
    word = "" if value is None else str(value).strip().lower()
    if not word:
        return None
    if word not in CRITICALITY:
        raise ValueError(f"criticality {str(value)[:40]!r} is not one of {', '.join(CRITICALITY)}")
    return word


def check_row(row: Mapping[str, object], max_id_length: int) -> DirectoryRow:
    """One directory row, normalised; ValueError names the field and the value."""
    user = row.get("user_id")
    if user is None or (isinstance(user, str) and not user.strip()):
        raise ValueError("user_id is missing")
    try:
        user_id = rules.check_id(user, max_id_length)
    except rules.RuleError as exc:
        raise ValueError(f"user_id {exc.message}") from None
    return {
        "user_id": user_id,
        "department": _text(row.get("department"), "department", MAX_NAME_LENGTH),
        "role": _text(row.get("role"), "role", MAX_NAME_LENGTH),
        "is_privileged": _privileged(row.get("is_privileged")),
        "criticality": _criticality(row.get("criticality")),
    }


def _parquet_columns(path: Path) -> tuple[list[str], list[str]]:
    """(directory columns to read, other columns), from the footer alone: a nested column,
    a type Polars cannot import (it panics) or a duration in a stranger's file is refused
    with one line before it is decoded."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        meta = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises several types for a file that is not Parquet
        raise UserError(f"cannot read Parquet file {path}: {str(exc).splitlines()[0] if str(exc) else exc}") from exc
    if meta.metadata.num_rows > MAX_PARQUET_ROWS:
        raise UserError(f"{path}: {meta.metadata.num_rows} rows is more than a directory holds "
                        f"(at most {MAX_PARQUET_ROWS})")
    wanted, ignored = [], []
    for field in meta.schema_arrow:
        if field.name not in COLUMNS:
            ignored.append(field.name)
            continue
        if field.type.num_fields or str(field.type).startswith(("list", "large_list", "map", "struct")):
            raise UserError(f"{path}: column {field.name} is {field.type}, not a plain value")
        why = "a duration" if pa.types.is_duration(field.type) else io.polars_import_problem(field.type)
        if why is not None:
            raise UserError(f"{path}: column {field.name} is {field.type}, {why}, not a plain value")
        wanted.append(field.name)
    if "user_id" not in wanted:
        _no_user_id(path, meta.schema_arrow.names)
    return wanted, ignored


def _read_parquet_as_strings(path: Path) -> tuple[pl.DataFrame, list[str]]:
    """The directory's columns as text, read as ingest reads typed event columns
    (``text_expr``): user 1 stored as 1.0 or 1.00 is user "1", as in the events; a
    ``user_id`` no id can be (a fraction, a boolean) is named in ``TYPE_ERROR``."""
    from uba.ingest.validate import text_expr

    wanted, ignored = _parquet_columns(path)
    try:
        frame = io.read_parquet_file(path, columns=wanted)
    except io.UNREADABLE_PARQUET as exc:
        raise UserError(f"cannot read Parquet file {path}: {str(exc).splitlines()[0]}") from exc
    problem = rules.id_dtype_error(pl.col("user_id"), frame.schema["user_id"])
    return frame.select(
        *(text_expr(name, dtype).alias(name) for name, dtype in frame.schema.items()),
        (pl.lit(None, pl.String) if problem is None else problem).alias(TYPE_ERROR),
    ), ignored


def read_directory_file(path: Path) -> tuple[pl.DataFrame, list[str]]:
    """The file's directory columns with every cell as text (validation decides what is
    wrong), and the names of the columns it ignores (a ``Department`` is not ``department``:
    the import names it rather than silently storing no departments)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"file not found: {path}")
    if path.suffix.lower() == ".parquet":
        return _read_parquet_as_strings(path)
    frame = io.read_csv_as_strings(path)
    if "user_id" not in frame.columns:
        _no_user_id(path, frame.columns)
    return frame.select(name for name in frame.columns if name in COLUMNS), \
        [name for name in frame.columns if name not in COLUMNS]


def _no_user_id(path: Path, found: Sequence[str]) -> NoReturn:
    raise UserError(f"{path}: no user_id column (expected {', '.join(COLUMNS)}; found "
                    f"{', '.join(found) or 'none'})")


def _is_blank(raw: Mapping[str, str | None]) -> bool:
    """A row with no value at all: a blank line or a spreadsheet's trailing ",,,,". Nothing
    to store and nothing wrong to report (ingest skips such rows too)."""
    return all(value is None or not value.strip() for value in raw.values())


def _split(rows: Sequence[Mapping[str, object]], max_id_length: int, line: Callable[[int], int],
           ) -> tuple[list[DirectoryRow], list[dict[str, str | int | None]], int]:
    """(valid rows, quarantined rows with line and reason, blank rows skipped); a repeated
    user keeps its first row."""
    good: list[DirectoryRow] = []
    bad: list[dict[str, str | int | None]] = []
    first_line: dict[str, int] = {}
    blank = 0
    for i, row in enumerate(rows):
        raw = {c: None if row.get(c) is None else str(row.get(c)) for c in COLUMNS}
        if _is_blank(raw) and not row.get(TYPE_ERROR):
            blank += 1
            continue
        try:
            if row.get(TYPE_ERROR):
                raise ValueError(f"user_id {row[TYPE_ERROR]}")
            clean = check_row(row, max_id_length)
        except ValueError as exc:
            bad.append({"line": line(i), "reason": str(exc), **raw})
            continue
        if clean["user_id"] in first_line:
            bad.append({"line": line(i), "reason": f"user_id {clean['user_id']!r} repeats line "
                                                   f"{first_line[clean['user_id']]}", **raw})
            continue
        first_line[clean["user_id"]] = line(i)
        good.append(clean)
    return good, bad, blank


def import_directory(data_dir: Path, path: Path, *, replace: bool = False,
                     max_id_length: int = 256) -> ImportSummary:
    """Validate ``path`` and store its users; every row is stored or quarantined.

    Without ``replace`` the stored directory keeps users the file does not mention (an
    export of one department updates that department); with it the file is the whole
    directory.
    """
    frame, ignored = read_directory_file(path)
    parquet = Path(path).suffix.lower() == ".parquet"
    summary = store_directory_frame(data_dir, frame, source=str(path), replace=replace, max_id_length=max_id_length,
                                    first_line=1 if parquet else 2,
                                    lines=None if parquet else io.csv_record_lines(Path(path), frame.height))
    return dataclasses.replace(summary, ignored_columns=tuple(ignored))


def store_directory_frame(data_dir: Path, frame: pl.DataFrame, *, source: str, replace: bool = False,
                          max_id_length: int = 256, first_line: int = 1,
                          lines: Sequence[int] | None = None) -> ImportSummary:
    """The checks and the store of :func:`import_directory`, for rows already in memory
    (``generate`` writes its population's directory through here). A quarantined row is
    named by ``lines[i]`` (the file's line of row i) or else ``i + first_line``."""
    path = source
    good, bad, blank = _split(frame.to_dicts(), max_id_length,
                              (lambda i: lines[i]) if lines else (lambda i: i + first_line))
    new = pl.DataFrame(good, schema=SCHEMA)
    target = directory_path(data_dir)
    merged, kept = _merge_and_store(data_dir, new, frame.columns, source, bad, replace)
    quarantine_path = None
    if bad:
        quarantined = pl.DataFrame([{"source": str(path), **b} for b in bad], schema=QUARANTINE_SCHEMA)
        quarantine_path = io.append_table_part(quarantined, Path(data_dir) / DIRECTORY, QUARANTINE)
    reasons: dict[str, int] = {}
    for b in bad:
        reason = str(b["reason"])
        key = reason.split(" ", 1)[0] + " " + _reason_kind(reason)
        reasons[key] = reasons.get(key, 0) + 1
    return ImportSummary(rows_read=frame.height, rows_stored=new.height, rows_quarantined=len(bad),
                         users_total=merged.height, reasons=reasons, path=target, quarantine_path=quarantine_path,
                         rows_blank=blank, kept_columns=kept)


def _merge_and_store(data_dir: Path, new: pl.DataFrame, columns: Sequence[str], source: str,
                     bad: Sequence[Mapping[str, object]], replace: bool) -> tuple[pl.DataFrame, tuple[str, ...]]:
    """Merge ``new`` into the stored directory and replace it, holding the directory's lock
    from the read to the write: two imports at once (one per department, as an HR and an
    IdP sync may run) each read the same stored table, and the later write dropped every
    user the other had stored while both said "stored" (found by an attack). Returns the
    merged table and the columns kept as stored."""
    target = directory_path(data_dir)
    with io.table_lock(data_dir, DIRECTORY):
        if replace and new.is_empty():
            _refuse_emptying(target, source, bad)
        present = stored_directory_file(data_dir)  # a folder in its place: one line, nothing written
        stored = None if replace or present is None else io.read_parquet_if_exists(present)
        kept = tuple(c for c in SCHEMA if c not in columns) if stored is not None else ()
        merged = new if stored is None else _update(stored.cast(pl.Schema(SCHEMA)), new, kept)
        io.write_parquet_atomic(merged.sort("user_id"), target)
    return merged, kept


def _update(stored: pl.DataFrame, new: pl.DataFrame, kept: Sequence[str]) -> pl.DataFrame:
    """The stored directory with the file's users updated. A column the file does not
    have keeps its stored values for those users (an IdP export without ``criticality``
    must not reset every listed user's criticality to unknown); a user new to the
    directory gets the column's empty value (unknown, not privileged)."""
    if kept:
        previous = stored.select("user_id", *kept)
        new = (new.drop(kept).join(previous, on="user_id", how="left")
               .with_columns(pl.col(c).fill_null(False) for c in kept if c == "is_privileged")
               .select(list(SCHEMA)))
    return pl.concat([stored.join(new.select("user_id"), on="user_id", how="anti"), new])


def _refuse_emptying(target: Path, source: str, bad: Sequence[Mapping[str, object]]) -> None:
    """``--replace`` with a file that holds no valid user (a truncated or wrong export)
    would delete the whole stored directory, and scoring would then run without peer
    groups or privilege weights: refused, nothing changed."""
    stored = io.read_parquet_if_exists(target)
    if stored is None or stored.is_empty():
        return
    why = (f"none of its {len(bad)} rows is valid (line {bad[0]['line']}: {bad[0]['reason']})" if bad
           else "it has no data rows")
    raise UserError(f"{source}: {why}; --replace would remove all {stored.height} users of the directory, "
                    "so nothing was changed")


def _reason_kind(reason: str) -> str:
    """A short grouping key for the summary ("user_id missing", "criticality invalid")."""
    if "missing" in reason:
        return "missing"
    if "repeats" in reason:
        return "repeated"
    return "invalid"


def directory_coverage(snapshot: DirectorySnapshot, user_ids: pl.Series) -> DirectoryCoverage | None:
    """How many of ``user_ids`` the directory lists, and which directory it was; None
    without a directory."""
    if snapshot.table is None or snapshot.sha256 is None:
        return None
    users = user_ids.unique()
    return {"users": snapshot.table.height,
            "matched_users": int(users.is_in(snapshot.table["user_id"].implode()).sum()),
            "run_users": users.len(), "sha256": snapshot.sha256}


@dataclass(frozen=True)
class DirectorySnapshot:
    """The stored directory as one run saw it. A score run reads it once and uses that
    one table for the model check, the peer groups, the coverage and the risk weights:
    read at each of those places, a ``users import`` landing mid-run gave a day peer
    groups from one directory and privilege weights from another, and its manifest
    named neither."""

    table: pl.DataFrame | None  # None: no directory stored
    sha256: str | None  # of the stored file's bytes, recorded in the manifest

    @property
    def present(self) -> bool:
        return self.table is not None


def read_directory_snapshot(data_dir: Path) -> DirectorySnapshot:
    """The stored directory's bytes read once, hashed and parsed from that one read (an
    import replaces the file by a rename, so the bytes are one whole version)."""
    path = stored_directory_file(data_dir)
    data = None if path is None else io.read_bytes_if_exists(path)
    if path is None or data is None:
        return DirectorySnapshot(table=None, sha256=None)
    table = io.read_parquet_bytes(data, path).cast(pl.Schema(SCHEMA))
    return DirectorySnapshot(table=table, sha256=hashlib.sha256(data).hexdigest())
