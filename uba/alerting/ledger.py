"""The delivery ledger: a durable outbox of alerts per sink, kept outside the day's outputs.

``<data-dir>/alerting/ledger.sqlite3`` (SQLite, WAL journal, ``synchronous=FULL``: a
committed transaction survives SIGKILL and a power cut). Tables:

- ``outbox(sink, alert_id, day, seq, payload, status, attempts, last_error, enqueued_at,
  delivered_at, ...)``, one row per alert and sink, keyed by ``(sink, alert_id)``. The
  payload is the alert rendered in the sink's format when it was enqueued; status is
  ``pending``, ``delivered`` or ``failed`` (the dead letters);
- ``enqueued_days(sink, day, run_id, at, added)``: which published run of a day was
  enqueued for a sink, so ``alerts deliver`` can enqueue runs that never were;
- ``sinks(name, registered_at)``: when the ledger first saw a sink (catch-up starts there).

Enqueueing is ``INSERT OR IGNORE``: a re-scored day (or ``backfill --force``) adds only
findings the ledger has not seen and never touches the status of the others, so a
delivered alert is never sent again under the same or another id. Ids are the export's
alert ids (``uba.alerting.records.alert_id``), never new ones.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date
from pathlib import Path

from uba.errors import UserError

SqlValue = str | int | float | bytes | None  # what sqlite3 binds to a "?"

LEDGER_DIR = "alerting"
LEDGER_NAME = "ledger.sqlite3"
SCHEMA_VERSION = 1
PENDING, DELIVERED, FAILED = "pending", "delivered", "failed"
STATUSES = (PENDING, DELIVERED, FAILED)
BUSY_TIMEOUT_MS = 30_000  # another process enqueueing (backfill and score at once) waits, not fails
MAX_ERROR_CHARS = 500

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS sinks(name TEXT PRIMARY KEY, registered_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS outbox(
    sink TEXT NOT NULL,
    alert_id TEXT NOT NULL,
    day TEXT NOT NULL,
    seq INTEGER NOT NULL,
    alert_type TEXT NOT NULL,
    user_id TEXT NOT NULL,
    run_id TEXT NOT NULL,
    payload TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('pending', 'delivered', 'failed')),
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    enqueued_at REAL NOT NULL,
    delivered_at REAL,
    PRIMARY KEY (sink, alert_id)
);
CREATE INDEX IF NOT EXISTS outbox_order ON outbox(sink, status, day, seq);
CREATE TABLE IF NOT EXISTS enqueued_days(
    sink TEXT NOT NULL,
    day TEXT NOT NULL,
    run_id TEXT NOT NULL,
    at REAL NOT NULL,
    added INTEGER NOT NULL,
    PRIMARY KEY (sink, day, run_id)
);
"""


def ledger_path(data_dir: Path) -> Path:
    """Where the ledger lives: beside the data, not in the day's outputs (which a re-score replaces)."""
    return Path(data_dir) / LEDGER_DIR / LEDGER_NAME


@dataclass(frozen=True)
class OutboxRow:
    """One alert waiting for (or done with) one sink."""

    sink: str
    alert_id: str
    day: str
    seq: int
    alert_type: str
    user_id: str
    payload: str
    status: str
    attempts: int
    last_error: str | None
    enqueued_at: float
    delivered_at: float | None


@dataclass(frozen=True)
class Entry:
    """An alert to enqueue: its id, what it is about and its rendered payload."""

    alert_id: str
    alert_type: str
    user_id: str
    payload: str


ROW_COLUMNS = ("sink", "alert_id", "day", "seq", "alert_type", "user_id", "payload", "status", "attempts",
               "last_error", "enqueued_at", "delivered_at")


class Ledger:
    """One connection to the ledger; every write is one short transaction."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
            self._db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            with self.transaction() as db:
                db.executescript_safe(SCHEMA)
                db.execute("INSERT OR IGNORE INTO meta(key, value) VALUES ('schema_version', ?)",
                           (str(SCHEMA_VERSION),))
        except (OSError, sqlite3.Error) as exc:
            raise UserError(f"cannot open the delivery ledger {self.path}: {exc}") from exc

    @classmethod
    def open(cls, data_dir: Path) -> Ledger:
        """The ledger of ``data_dir`` (created on first use)."""
        return cls(ledger_path(data_dir))

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[_Tx]:
        """``BEGIN IMMEDIATE`` ... ``COMMIT``: writers queue up instead of failing half-way."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield _Tx(self._db)
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    # -- sinks -------------------------------------------------------------------------

    def register_sinks(self, names: Iterable[str], now: float | None = None) -> None:
        """Note when each sink was first seen; days published after that are caught up."""
        at = time.time() if now is None else now
        with self.transaction() as db:
            for name in names:
                db.execute("INSERT OR IGNORE INTO sinks(name, registered_at) VALUES (?, ?)", (name, at))

    def registered_at(self, name: str) -> float | None:
        row = self._db.execute("SELECT registered_at FROM sinks WHERE name = ?", (name,)).fetchone()
        return None if row is None else float(row[0])

    # -- enqueue -----------------------------------------------------------------------

    def enqueue(self, day: date, run_id: str, entries: Mapping[str, Sequence[Entry]],
                now: float | None = None) -> dict[str, int]:
        """Add the ``entries`` of ``day`` for each sink, all in one transaction; returns how
        many were new per sink.

        Alerts the ledger already holds for a sink keep their row (status, attempts,
        payload, place in the order): re-scoring never erases history nor re-sends. New
        ones go after everything the sink already has (``seq``), in the order given.
        """
        at = time.time() if now is None else now
        added: dict[str, int] = {}
        with self.transaction() as db:
            for sink, rows in entries.items():
                (top,) = db.execute("SELECT COALESCE(MAX(seq), -1) FROM outbox WHERE sink = ?", (sink,)).fetchone()
                before = db.total_changes()
                db.executemany(
                    "INSERT OR IGNORE INTO outbox(sink, alert_id, day, seq, alert_type, user_id, run_id, payload, "
                    "status, attempts, enqueued_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'pending', 0, ?)",
                    [(sink, e.alert_id, day.isoformat(), top + 1 + i, e.alert_type, e.user_id, run_id, e.payload, at)
                     for i, e in enumerate(rows)])
                added[sink] = db.total_changes() - before
                db.execute("INSERT OR REPLACE INTO enqueued_days(sink, day, run_id, at, added) VALUES (?, ?, ?, ?, ?)",
                           (sink, day.isoformat(), run_id, at, added[sink]))
        return added

    def was_enqueued(self, sink: str, day: date, run_id: str) -> bool:
        row = self._db.execute("SELECT 1 FROM enqueued_days WHERE sink = ? AND day = ? AND run_id = ?",
                               (sink, day.isoformat(), run_id)).fetchone()
        return row is not None

    # -- delivery ----------------------------------------------------------------------

    def next_pending(self, sink: str, limit: int) -> list[OutboxRow]:
        """The oldest pending alerts of ``sink``, in delivery order (day, then seq)."""
        rows = self._db.execute(
            f"SELECT {', '.join(ROW_COLUMNS)} FROM outbox WHERE sink = ? AND status = 'pending' "
            "ORDER BY day, seq LIMIT ?", (sink, limit)).fetchall()
        return [OutboxRow(*row) for row in rows]

    def mark_delivered(self, sink: str, alert_ids: Sequence[str], now: float | None = None) -> None:
        """After the sink acknowledged them, never before."""
        at = time.time() if now is None else now
        with self.transaction() as db:
            db.executemany("UPDATE outbox SET status = 'delivered', delivered_at = ?, attempts = attempts + 1, "
                           "last_error = NULL WHERE sink = ? AND alert_id = ? AND status = 'pending'",
                           [(at, sink, a) for a in alert_ids])

    def note_attempt(self, sink: str, alert_ids: Sequence[str], error: str) -> None:
        """A failed try that will be retried: the alerts stay pending with the reason."""
        with self.transaction() as db:
            db.executemany("UPDATE outbox SET attempts = attempts + 1, last_error = ? "
                           "WHERE sink = ? AND alert_id = ? AND status = 'pending'",
                           [(error[:MAX_ERROR_CHARS], sink, a) for a in alert_ids])

    def mark_failed(self, sink: str, alert_ids: Sequence[str], error: str) -> None:
        """Dead-letter: the sink refused these alerts for good (a 4xx other than 429)."""
        with self.transaction() as db:
            db.executemany("UPDATE outbox SET status = 'failed', attempts = attempts + 1, last_error = ? "
                           "WHERE sink = ? AND alert_id = ? AND status = 'pending'",
                           [(error[:MAX_ERROR_CHARS], sink, a) for a in alert_ids])

    def retry_failed(self, sink: str | None = None, alert_ids: Sequence[str] = ()) -> int:
        """Move dead letters back to pending (after the receiver was fixed); returns how many."""
        where, args = ["status = 'failed'"], []
        if sink is not None:
            where.append("sink = ?")
            args.append(sink)
        if alert_ids:
            where.append(f"alert_id IN ({', '.join('?' * len(alert_ids))})")
            args.extend(alert_ids)
        with self.transaction() as db:
            before = db.total_changes()
            db.execute(f"UPDATE outbox SET status = 'pending' WHERE {' AND '.join(where)}", args)
            return db.total_changes() - before

    # -- reading -----------------------------------------------------------------------

    def rows(self, status: str | None = None, sink: str | None = None, day: date | None = None,
             limit: int | None = None) -> list[OutboxRow]:
        """Rows in delivery order, filtered (for ``alerts list`` and tests)."""
        where: list[str] = ["1 = 1"]
        args: list[SqlValue] = []
        for column, value in (("status", status), ("sink", sink), ("day", day.isoformat() if day else None)):
            if value is not None:
                where.append(f"{column} = ?")
                args.append(value)
        query = f"SELECT {', '.join(ROW_COLUMNS)} FROM outbox WHERE {' AND '.join(where)} ORDER BY sink, day, seq"
        if limit is not None:
            query += " LIMIT ?"
            args.append(limit)
        return [OutboxRow(*row) for row in self._db.execute(query, args).fetchall()]

    def counts(self, day: date | None = None) -> dict[str, dict[str, int]]:
        """``{sink: {pending, delivered, failed}}`` over the whole ledger or one day."""
        query = "SELECT sink, status, COUNT(*) FROM outbox"
        args: list[SqlValue] = []
        if day is not None:
            query += " WHERE day = ?"
            args.append(day.isoformat())
        out: dict[str, dict[str, int]] = {}
        for sink, status, n in self._db.execute(query + " GROUP BY sink, status", args).fetchall():
            out.setdefault(sink, dict.fromkeys(STATUSES, 0))[status] = int(n)
        return out

    def oldest_pending_day(self, sink: str) -> str | None:
        row = self._db.execute("SELECT MIN(day) FROM outbox WHERE sink = ? AND status = 'pending'",
                               (sink,)).fetchone()
        return row[0] if row else None


class _Tx:
    """The connection inside a transaction (``executescript`` would commit it, so it is split)."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def execute(self, sql: str, args: Sequence[SqlValue] = ()) -> sqlite3.Cursor:
        return self._db.execute(sql, args)

    def executemany(self, sql: str, rows: Iterable[Sequence[SqlValue]]) -> sqlite3.Cursor:
        return self._db.executemany(sql, rows)

    def executescript_safe(self, script: str) -> None:
        for statement in (s.strip() for s in script.split(";")):
            if statement:
                self._db.execute(statement)

    def total_changes(self) -> int:
        return self._db.total_changes


def ledger_exists(data_dir: Path) -> bool:
    """Whether any delivery was ever configured here (monitor shows nothing otherwise)."""
    return ledger_path(data_dir).is_file()


@dataclass(frozen=True)
class SinkState:
    """One sink's outbox totals, as `monitor` and `alerts outbox` show them."""

    sink: str
    pending: int
    delivered: int
    failed: int
    oldest_pending: str | None

    @property
    def needs_attention(self) -> bool:
        """Anything not yet taken, or refused for good, wants an operator's look."""
        return bool(self.pending or self.failed)


def sink_states(data_dir: Path) -> list[SinkState] | None:
    """Per sink, sorted by name; None when no ledger exists (never creates one)."""
    if not ledger_exists(data_dir):
        return None
    with Ledger.open(data_dir) as ledger:
        return [SinkState(sink, c["pending"], c["delivered"], c["failed"], ledger.oldest_pending_day(sink))
                for sink, c in sorted(ledger.counts().items())]


def outbox_rows(data_dir: Path, status: str, sink: str | None, day: date | None,
                limit: int | None) -> list[OutboxRow] | None:
    """Outbox rows in delivery order; None when no ledger exists (never creates one)."""
    if not ledger_exists(data_dir):
        return None
    with Ledger.open(data_dir) as ledger:
        return ledger.rows(status=status, sink=sink, day=day, limit=limit)


def retry_dead_letters(data_dir: Path, sink: str | None, alert_ids: Sequence[str]) -> int:
    """Queue dead letters again; a missing ledger or an unknown sink is a user error
    (nothing to retry there), and no ledger or data directory is created."""
    if not ledger_exists(data_dir):
        raise UserError(f"no delivery ledger under {data_dir}: no alerting sink has been used "
                        "with this data directory, so there are no dead letters")
    with Ledger.open(data_dir) as ledger:
        known = ledger.counts()
        if sink is not None and sink not in known:
            raise UserError(f"sink: no sink named {sink!r} in the delivery ledger "
                            f"(known: {', '.join(sorted(known)) or 'none'})")
        return ledger.retry_failed(sink, alert_ids)
