"""Analyst feedback on alerts, and suppression rules for known-benign patterns.

Feedback is keyed by ``event_id``: an event's own id, or an alert id (``uba-...``, as
``uba.alerting.records.alert_id`` makes it and the export and entity risk show it), which
is how a user-day alert, having no event, gets a verdict. A benign verdict removes the
alert's contribution to entity risk (``uba.alerting.risk``).

Both live under the data directory as append-only Parquet tables, so nothing an
analyst said is ever overwritten: the latest label for an event wins, and removing a
suppression rule appends a tombstone rather than deleting the rule.

Suppression matches on an event's *top* reason kind, not on any of its reason kinds:
a rule "user u7 often downloads a lot" must not silence an alert whose main reason is
a 3 a.m. login that merely also mentions downloads. A suppressed event is still
scored and still written; it just does not count as an alert.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path

import numpy as np
import polars as pl

from uba import event_rules as rules
from uba import io
from uba.errors import UserError
from uba.features.reasons import REASON_KINDS
from uba.schema import FEEDBACK_COLUMNS, FEEDBACK_SCHEMA

LABELS = ("benign", "malicious")
MAX_ANALYST, MAX_NOTE = rules.MAX_ANALYST, rules.MAX_NOTE  # POST /feedback's limits, for a CSV too
WILDCARD = "*"
RULE_SCHEMA: dict[str, pl.DataType] = {
    "rule_id": pl.String(),
    "action": pl.String(),
    "user_id": pl.String(),
    "reason_kind": pl.String(),
    "expires": pl.Date(),
    "note": pl.String(),
    "recorded_at": pl.Datetime("us", "UTC"),
}
ACTIVE_RULE_COLUMNS = ("rule_id", "user_id", "reason_kind", "expires", "note", "recorded_at")


@dataclass(frozen=True)
class FeedbackSummary:
    """What one feedback submission stored, for the CLI and the API to report."""

    rows: int
    benign: int
    malicious: int
    path: Path
    benign_ids: tuple[str, ...] = ()  # ids labelled benign: entity risk marks the days they built stale
    # ids whose latest label was benign and is now malicious: their alerts count in entity
    # risk again, so the days they were left out of are stale too
    unbenign_ids: tuple[str, ...] = ()
    rows_blank: int = 0  # CSV rows with no value at all (blank lines, ",,,"): skipped, not refused


def _text(value: object) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def _bounded(value: object, field: str, limit: int, where: str) -> str | None:
    """An analyst's name or note, at most ``limit`` characters: the limits POST /feedback
    has (``uba.api.schemas``). A feedback CSV had none, and stored a 20 MB note and a
    300-character analyst that the API refuses for the same verdict (found by an attack).

    The characters follow the analyst text rule of triage and the API
    (``uba.event_rules.check_text``; a note may hold line breaks and tabs): both paths
    stored an ANSI escape, a carriage return or a right-to-left override in an analyst
    or a note, which a close through ``uba-batch alerts`` refuses. The length is that of the
    text as given (see ``given_length_error``)."""
    given = None if value is None else str(value)
    too_long = given_length_error(given, limit)
    if too_long:
        raise UserError(f"{where}: {field} is {too_long}")
    return analyst_text(given, field == "note", f"{where}: {field}")


def given_length_error(value: str | None, limit: int) -> str | None:
    """``"N characters, at most LIMIT"`` when analyst text is longer than ``limit`` as given,
    before its CR LF become LF and its surrounding whitespace is removed, else None: how
    POST /feedback and PATCH /alerts count it (their schema's ``maxLength``, checked before
    the analyst text rule). The CLI counted the text as stored, so the same note was
    stored from a CSV and refused by the API (a 1,400-character note of 700 Windows lines,
    a 2,000-character note with a trailing line break; found by an attack)."""
    if value is None or len(value) <= limit:
        return None
    return f"{len(value)} characters, at most {limit}"


def analyst_text(value: str | None, lines: bool, what: str) -> str | None:
    """``value`` by the analyst text rule (``uba.event_rules.check_text``), or a UserError
    beginning with ``what`` and naming the refused character's code point."""
    try:
        return rules.check_text(value, lines)
    except rules.RuleError as exc:
        raise UserError(f"{what} {exc.message}") from None


def _event_id(value: object, max_id_length: int, where: str) -> str:
    """The stored text of a feedback event id, by the event id rule of ingest and the API
    (``uba.event_rules.check_id``): the CSV path stored a 10 MB id, or one holding NUL or a
    line break, which POST /feedback refuses and no stored event can have."""
    if value is None or (isinstance(value, str) and not value.strip()):
        raise UserError(f"{where}: event_id is missing")
    try:
        return rules.check_id(value, max_id_length)
    except rules.RuleError as exc:
        raise UserError(f"{where}: event_id {exc.message}") from None


def validate_feedback(rows: Sequence[Mapping[str, object]], where: Callable[[int], str],
                      max_id_length: int = 256) -> pl.DataFrame:
    """Check and normalise feedback rows; the first problem is a UserError naming the row and value.

    ``where(i)`` turns a 0-based row index into the caller's words ("line 4" for a CSV,
    "item 2" for an API body), so the analyst can find the bad row. ``max_id_length`` is
    the events' ``max_string_length``.
    """
    if not rows:
        raise UserError("feedback has no rows")
    clean: dict[str, list[str | None]] = {c: [] for c in FEEDBACK_COLUMNS}
    for i, row in enumerate(rows):
        event_id = _event_id(row.get("event_id"), max_id_length, where(i))
        raw_label = _text(row.get("label"))
        label = raw_label.lower() if raw_label else None
        if label not in LABELS:
            raise UserError(f"{where(i)}: label {raw_label!r} is not one of {', '.join(LABELS)}")
        clean["event_id"].append(event_id)
        clean["label"].append(label)
        clean["analyst"].append(_bounded(row.get("analyst"), "analyst", MAX_ANALYST, where(i)))
        clean["note"].append(_bounded(row.get("note"), "note", MAX_NOTE, where(i)))
    return pl.DataFrame(clean, schema={c: pl.String() for c in FEEDBACK_COLUMNS})


@dataclass(frozen=True)
class PendingFeedback:
    """Checked feedback rows as they will be stored (``FEEDBACK_SCHEMA``), not stored yet.
    Entity risk marks the days they change stale before they are stored, under the lock
    a score run holds from its check of verdicts to its commit
    (``uba.alerting.risk.record_verdicts``), so the marks come from the rows themselves."""

    rows: pl.DataFrame
    rows_blank: int = 0  # CSV rows with no value at all, skipped

    @property
    def benign_ids(self) -> tuple[str, ...]:
        """Ids labelled benign: entity risk marks the days they built stale."""
        return tuple(self.rows.filter(pl.col("label") == "benign")["event_id"].unique(maintain_order=True))

    def unbenign_ids(self, data_dir: Path) -> tuple[str, ...]:
        """Ids whose verdict in effect is benign now and would not be once these rows are
        stored (a malicious label taking it back, under the id or the event alert's other
        id): their alerts count in entity risk again. Read under the same lock as the store
        that follows, so no other verdict lands in between."""
        if not (self.rows["label"] != "benign").any():
            return ()
        before = io.benign_verdicts(data_dir)
        if not before:
            return ()
        return tuple(sorted(before - io.benign_verdicts(data_dir, pending=self.rows)))


def pending_feedback(rows: Sequence[Mapping[str, object]], source: str = "api",
                     where: Callable[[int], str] | None = None, max_id_length: int = 256) -> PendingFeedback:
    """Validate feedback rows and stamp them (source, time, order) as they will be stored."""
    valid = validate_feedback(rows, where or (lambda i: f"item {i}"), max_id_length)
    stamped = valid.with_columns(
        pl.lit(source, dtype=pl.String()).alias("source"),
        pl.lit(datetime.now(UTC), dtype=pl.Datetime("us", "UTC")).alias("recorded_at"),
        pl.int_range(pl.len(), dtype=pl.Int64).alias("seq"),
    ).select(list(FEEDBACK_SCHEMA))
    return PendingFeedback(stamped)


def store_feedback(data_dir: Path, pending: PendingFeedback, unbenign_ids: tuple[str, ...] = ()) -> FeedbackSummary:
    """Append ``pending`` as one part of ``<data-dir>/feedback/`` (all or nothing);
    ``unbenign_ids`` is what :meth:`PendingFeedback.unbenign_ids` read just before."""
    io.fault_point(io.FEEDBACK, Path(data_dir) / io.FEEDBACK)
    path = io.append_table_part(pending.rows, data_dir, io.FEEDBACK)
    counts = pending.rows["label"].value_counts()
    by_label = dict(zip(counts["label"].to_list(), counts["count"].to_list(), strict=True))
    return FeedbackSummary(rows=pending.rows.height, benign=int(by_label.get("benign", 0)),
                           malicious=int(by_label.get("malicious", 0)), path=path, benign_ids=pending.benign_ids,
                           unbenign_ids=unbenign_ids, rows_blank=pending.rows_blank)


def record_feedback(data_dir: Path, rows: Sequence[Mapping[str, object]], source: str = "api",
                    where: Callable[[int], str] | None = None, max_id_length: int = 256) -> FeedbackSummary:
    """Validate and append feedback rows as one part of ``<data-dir>/feedback/`` (all or
    nothing), marking nothing stale: the CLI, POST /feedback and a close store verdicts
    through ``uba.alerting.risk.record_verdicts``, which marks the risk days first."""
    pending = pending_feedback(rows, source, where, max_id_length)
    return store_feedback(data_dir, pending, pending.unbenign_ids(data_dir))


def _is_blank(row: Mapping[str, object]) -> bool:
    """A CSV row with no value in any feedback column: a blank line or a spreadsheet's
    ",,,". Nothing to store and nothing wrong to report, as ``users import`` skips such
    rows (also looking at its own columns only) and ``ingest`` quarantines them; a whole
    file used to be refused for one."""
    return all(value is None or not str(value).strip() for value in row.values())


def pending_feedback_csv(csv_path: Path, max_id_length: int = 256) -> PendingFeedback:
    """Feedback from an analyst's CSV (event_id, label[, analyst, note]), checked, not stored;
    errors name the CSV line. Rows with no value at all are skipped and counted
    (``rows_blank``)."""
    frame = io.read_csv_as_strings(csv_path)
    missing = [c for c in ("event_id", "label") if c not in frame.columns]
    if missing:
        raise UserError(f"{csv_path}: missing column(s) {', '.join(missing)} "
                        f"(expected event_id, label[, analyst, note]; found {', '.join(frame.columns) or 'none'})")
    lines = io.csv_record_lines(Path(csv_path), frame.height)  # a quoted note may span lines
    labels = frame.select(c for c in FEEDBACK_COLUMNS if c in frame.columns)  # ignored columns do not count
    kept = [i for i, row in enumerate(labels.iter_rows(named=True)) if not _is_blank(row)]
    blank = frame.height - len(kept)
    if blank and not kept:
        raise UserError(f"{csv_path}: no labels, only {blank} blank row(s)")
    rows = labels[kept].to_dicts()
    pending = pending_feedback(rows, source=f"csv:{Path(csv_path).name}",
                               where=lambda i: f"{csv_path} line {lines[kept[i]] if lines else kept[i] + 2}",
                               max_id_length=max_id_length)
    return dataclasses.replace(pending, rows_blank=blank)


def record_feedback_csv(data_dir: Path, csv_path: Path, max_id_length: int = 256) -> FeedbackSummary:
    """:func:`pending_feedback_csv`, stored as :func:`record_feedback` stores rows (no marks)."""
    pending = pending_feedback_csv(csv_path, max_id_length)
    return store_feedback(data_dir, pending, pending.unbenign_ids(data_dir))


def confirmed_malicious_ids(data_dir: Path) -> set[str]:
    """Ids (event ids, or alert ids of event alerts) whose verdict in effect is malicious:
    `train --exclude-malicious` drops their events. The verdict in effect is the one entity
    risk and the alert views use (``io.verdicts_in_effect``): the later of the labels under
    an event id and under its alert id. By event id alone, a malicious verdict given by
    alert id (as the export names alerts) kept its event in training, and a malicious close
    taken back by a later benign verdict under the alert id still dropped it."""
    return set(io.verdicts_in_effect(data_dir).filter(pl.col("label") == "malicious")["event_id"])


# --- suppression rules -------------------------------------------------------------


def _check_rule_fields(user_id: str, reason_kind: str, known_kinds: Sequence[str]) -> tuple[str, str]:
    user = user_id.strip()
    kind = reason_kind.strip()
    if not user:
        raise UserError("suppression rule: user_id is empty (use '*' for every user)")
    bad = rules.bad_id_char(user)
    if bad is not None:  # no event can have such a user: a typo at best, a forged `suppress list` row at worst
        raise UserError(f"suppression rule: user_id {user!r} holds U+{ord(bad):04X}, which no user id may hold "
                        "(control, invisible or format characters)")
    if kind != WILDCARD and kind not in known_kinds:
        raise UserError(f"suppression rule: reason kind {kind!r} is not one of "
                        f"{', '.join(known_kinds)} or '*'")
    return user, kind


def _rule_note(note: str | None) -> str | None:
    """A rule's note by the rule of any analyst's note (``analyst_text``, at most MAX_NOTE
    characters): ``suppress add --note`` stored an ANSI escape, a carriage return or a bidi
    override, which a close with suppress_similar (whose note becomes the rule's) refuses."""
    too_long = given_length_error(note, MAX_NOTE)
    if too_long:
        raise UserError(f"suppression rule: note is {too_long}")
    return analyst_text(note, True, "suppression rule: note")


def add_rule(data_dir: Path, user_id: str, reason_kind: str, known_kinds: Sequence[str],
             expires: date | None = None, note: str | None = None, today: date | None = None) -> str:
    """Append a suppression rule and return its id; an already-expired rule is refused as a mistake."""
    user, kind = _check_rule_fields(user_id, reason_kind, known_kinds)
    note = _rule_note(note)
    today = today or datetime.now(UTC).date()
    if expires is not None and expires < today:
        raise UserError(f"suppression rule: expires {expires.isoformat()} is already in the past")
    rule_id = uuid.uuid4().hex[:10]
    row = pl.DataFrame([{"rule_id": rule_id, "action": "add", "user_id": user, "reason_kind": kind,
                         "expires": expires, "note": note, "recorded_at": datetime.now(UTC)}],
                       schema=RULE_SCHEMA)
    io.append_table_part(row, data_dir, io.SUPPRESSIONS)
    return rule_id


def remove_rule(data_dir: Path, rule_id: str) -> None:
    """Retire a rule by appending a tombstone, so the history of what was suppressed stays readable."""
    active = active_rules(load_rules(data_dir), day=None)
    if rule_id not in active["rule_id"].to_list():
        raise UserError(f"no active suppression rule with id {rule_id!r} (see `uba-batch suppress list`)")
    row = pl.DataFrame([{"rule_id": rule_id, "action": "remove", "user_id": None, "reason_kind": None,
                         "expires": None, "note": None, "recorded_at": datetime.now(UTC)}],
                       schema=RULE_SCHEMA)
    io.append_table_part(row, data_dir, io.SUPPRESSIONS)


def load_rules(data_dir: Path) -> pl.DataFrame:
    """Every rule event (adds and removes) ever written, in write order."""
    parts = io.scan_table(data_dir, io.SUPPRESSIONS)
    if parts is None:
        return pl.DataFrame(schema=RULE_SCHEMA)
    return parts.sort(["_part", "recorded_at"]).select(list(RULE_SCHEMA)).collect()


def active_rules(rule_log: pl.DataFrame, day: date | None) -> pl.DataFrame:
    """Rules added and not removed; with ``day``, also not expired before it (expiry day is inclusive)."""
    removed = rule_log.filter(pl.col("action") == "remove")["rule_id"].to_list()
    rules = rule_log.filter((pl.col("action") == "add") & ~pl.col("rule_id").is_in(removed))
    if day is not None:
        rules = rules.filter(pl.col("expires").is_null() | (pl.col("expires") >= day))
    return rules.select(list(ACTIVE_RULE_COLUMNS))


Rule = tuple[str, str, str]  # (rule_id, user_id or WILDCARD, reason_kind or WILDCARD)


def rule_tuples(rules: pl.DataFrame) -> list[Rule]:
    """Active rules (``active_rules``, write order) as plain tuples for ``suppressing_rules``."""
    if rules.is_empty():
        return []
    return [(str(r), str(u), str(k)) for r, u, k in rules.select("rule_id", "user_id", "reason_kind").rows()]


def suppressing_rules(user_ids: Sequence[str | None] | pl.Series, top_kinds: Sequence[str | None] | pl.Series,
                      flagged: Sequence[bool] | np.ndarray, rules: Sequence[Rule]) -> list[str | None]:
    """Per event, the id of the first rule (in write order) whose user and top reason kind
    match a flagged event, else None. Only flagged events can be suppressed; the loop runs
    over the flagged events only (a few percent of a day) and the handful of rules."""
    by: list[str | None] = [None] * len(flagged)
    if not rules:
        return by
    for i in np.flatnonzero(np.asarray(flagged, dtype=bool)).tolist():
        user, top = user_ids[i], top_kinds[i]
        for rule_id, rule_user, rule_kind in rules:
            if rule_user in (WILDCARD, user) and rule_kind in (WILDCARD, top):
                by[i] = rule_id
                break
    return by


def listed_rules(data_dir: Path, include_expired: bool = False) -> pl.DataFrame:
    """The rules ``suppress list`` shows: not removed, and unless ``include_expired`` still
    in force today (UTC)."""
    return active_rules(load_rules(data_dir), None if include_expired else datetime.now(UTC).date())


def known_reason_kinds() -> tuple[str, ...]:
    """The stable reason kinds a rule may name (owned by uba.features.reasons)."""
    return tuple(REASON_KINDS)
