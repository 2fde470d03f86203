"""The event contract of DESIGN.md as Polars schemas.

Raw input may arrive with any types (CSV gives strings); validation turns it into
``EVENT_SCHEMA``, the one typed shape stored under ``events/`` and read by every later
stage. ``session_id`` is an optional extension: when logs carry it, session-level
features use it; when they do not, it stays null.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Iterable

import polars as pl

REQUIRED_FIELDS: tuple[str, ...] = (
    "event_id",
    "user_id",
    "timestamp",
    "event_type",
    "session_duration_sec",
    "events_in_session",
    "device_type",
)
OPTIONAL_FIELDS: tuple[str, ...] = ("hour_of_day", "day_of_week", "session_id")
RAW_FIELDS: tuple[str, ...] = REQUIRED_FIELDS + OPTIONAL_FIELDS

TIMESTAMP_DTYPE = pl.Datetime("us", "UTC")

EVENT_SCHEMA: dict[str, pl.DataType] = {
    "event_id": pl.String(),
    "user_id": pl.String(),
    "timestamp": TIMESTAMP_DTYPE,
    "event_type": pl.String(),
    "session_duration_sec": pl.Float64(),
    "events_in_session": pl.Int64(),
    "device_type": pl.String(),
    "hour_of_day": pl.Int8(),
    "day_of_week": pl.Int8(),
    "session_id": pl.String(),
}

QUARANTINE_SCHEMA: dict[str, pl.DataType] = {
    **{name: pl.String() for name in RAW_FIELDS},
    "reason": pl.String(),
    "source_file": pl.String(),
    "source_row": pl.Int64(),
    "ingested_at": TIMESTAMP_DTYPE,
}

# JSON of unknown shape (a parsed body or file whose keys nobody reads by name).
JsonValue = dict[str, "JsonValue"] | list["JsonValue"] | str | int | float | bool | None

PARTITION_COLUMN = "event_date"
UNKNOWN_PARTITION = "unknown"


# --- analyst feedback: one row per label given to an event (append-only table) ---
FEEDBACK_COLUMNS = ("event_id", "label", "analyst", "note")
FEEDBACK_SCHEMA: dict[str, pl.DataType] = {
    "event_id": pl.String(),
    "label": pl.String(),
    "analyst": pl.String(),
    "note": pl.String(),
    "source": pl.String(),
    "recorded_at": pl.Datetime("us", "UTC"),
    "seq": pl.Int64(),
}

# --- findings: every alert's stable id (the alerting records, feedback and baseline
# protection all name alerts by it, so it lives below all of them) ---
ALERT_TYPES = ("event", "user_day", "risk")
ID_PREFIX = "uba-"


def alert_id(alert_type: str, *subject: str) -> str:
    """Stable id of a finding: its kind and what it is about (see the module doc)."""
    if alert_type not in ALERT_TYPES:
        raise ValueError(f"unknown alert type {alert_type!r}")
    text = "\x1f".join((alert_type, *subject))
    return ID_PREFIX + hashlib.blake2b(text.encode("utf-8"), digest_size=12).hexdigest()


def alert_ids(alert_type: str, subjects: Iterable[str], *common: str) -> list[str]:
    """``alert_id(alert_type, subject, *common)`` for each of ``subjects``, the same ids: in
    one loop, without a call per finding (the ~50,000 event alerts of a day's entity risk:
    100 -> 65 ms, after the shards)."""
    if alert_type not in ALERT_TYPES:
        raise ValueError(f"unknown alert type {alert_type!r}")
    head, tail = alert_type + "\x1f", "".join("\x1f" + part for part in common)
    digest = hashlib.blake2b
    return [ID_PREFIX + digest((head + subject + tail).encode("utf-8"), digest_size=12).hexdigest()
            for subject in subjects]


def not_called_benign(alert_type: str, subjects: list[str], benign: Collection[str], *common: str,
                      event_ids: bool = False) -> pl.Series:
    """For each alert (``alert_id(alert_type, subject, *common)``), whether ``benign``
    (verdict ids) leaves it out; with ``event_ids`` the subjects are event ids, which a
    verdict may name as well.

    Alert ids are only hashed when some verdict names an alert id (they all start with
    ``ID_PREFIX``): hashing every alert of a 14-day protection window (42,000 of them)
    took 0.1 s of each run, to compare with no verdicts at all or only event ids."""
    kept = [s not in benign for s in subjects] if event_ids else [True] * len(subjects)
    if any(b.startswith(ID_PREFIX) for b in benign):
        kept = [k and i not in benign for k, i in zip(kept, alert_ids(alert_type, subjects, *common), strict=True)]
    return pl.Series(kept, dtype=pl.Boolean)


def unsuppressed_alert(columns: Collection[str]) -> pl.Expr:
    """Whether a scored or flagged event row is an alert someone sees: over its cut
    (``is_anomaly``) and not hidden by a suppression rule. The one definition read by the
    alert records, entity risk, the report, the user evaluation and baseline protection.

    ``columns`` are the frame's column names, since published outputs older than a column
    lack it: without ``suppressed`` (runs before suppression) nothing is suppressed; without
    ``is_anomaly`` the rows are the flagged table's, all over their cut. A null reads as
    False in both.
    """
    flagged = pl.col("is_anomaly").fill_null(False) if "is_anomaly" in columns else pl.lit(True)
    suppressed = pl.col("suppressed").fill_null(False) if "suppressed" in columns else pl.lit(False)
    return flagged & ~suppressed
