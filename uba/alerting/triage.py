"""Triage of alerts: open, acknowledged, closed, and the analyst's verdict.

An alert is any canonical record of a scored day (``uba.alerting.records``: a flagged
event, a user-day alert, a user at high entity risk), named by its stable alert id, so
a status survives re-scoring and a new model: the same finding keeps its id and so its
status. Every action is appended to ``<data-dir>/triage/`` (an append-only table, as
feedback and suppression rules are) and the latest action per alert is its status:
nothing an analyst did is ever overwritten, and the history of an alert is its rows.

A close carries a verdict, benign or malicious, written also to the feedback store:
under the event id for an event alert (what ``train --exclude-malicious`` and the
suppression tooling read), under the alert id for a user-day or risk alert (what entity
risk reads for the findings that are not one event). A benign close is a late verdict
like ``uba-batch feedback``: the risk days the alert built, and every later one, are
marked stale, before the verdict is stored (``uba.alerting.risk.record_verdicts``); so
does a malicious close of an alert whose verdict was benign (reopened), which counts it
in entity risk again.

So the feedback store holds every verdict, however it was given (``uba-batch feedback``,
``POST /feedback``, a close), and the triage table only the lifecycle. Every view of an
alert (``alerts list``, ``alerts show``, ``GET /alerts``) shows as its ``verdict`` the one
in effect, as entity risk reads it: the latest label under the alert id or, for an event
alert, its event id (``with_verdicts``), with ``verdict_source`` and ``verdict_at``. The
views used to take the verdict of the latest triage action, so a verdict given through
``feedback`` never showed, and a reopen hid one still in effect.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import TypedDict, cast

import polars as pl

from uba import io
from uba.alerting.feedback import (
    LABELS,
    MAX_ANALYST,
    MAX_NOTE,
    WILDCARD,
    active_rules,
    add_rule,
    analyst_text,
    given_length_error,
    known_reason_kinds,
    load_rules,
    pending_feedback,
)
from uba.alerting.records import (
    RECORD_SCHEMA,
    RISK_LEVELS,
    AlertRecord,
    DayNotScoredError,
    alert_records,
    day_records,
)
from uba.alerting.risk import record_verdicts
from uba.errors import UserError, first_line
from uba.logs import get_logger

log = get_logger("triage")
TRIAGE = "triage"
STATUSES = ("open", "acknowledged", "closed")
ACTIONS = {"ack": "acknowledged", "close": "closed", "reopen": "open"}
# which actions an alert in each status can take; a repeated ack or close is a mistake
ALLOWED = {"open": ("ack", "close"), "acknowledged": ("close", "reopen"), "closed": ("reopen",)}
TRIAGE_SCHEMA: dict[str, pl.DataType] = {
    "alert_id": pl.String(),
    "action": pl.String(),
    "status": pl.String(),
    "verdict": pl.String(),
    "note": pl.String(),
    "analyst": pl.String(),
    "alert_type": pl.String(),
    "user_id": pl.String(),
    "event_date": pl.Date(),
    "suppression_rule": pl.String(),
    "recorded_at": pl.Datetime("us", "UTC"),
}
STATE_COLUMNS = ("status", "note", "analyst", "updated_at")
VERDICT_COLUMNS = ("verdict", "verdict_source", "verdict_at")


class TriageAction(TypedDict):
    """One row of the triage table (``TRIAGE_SCHEMA``) as Python values."""

    alert_id: str
    action: str
    status: str
    verdict: str | None
    note: str | None
    analyst: str | None
    alert_type: str
    user_id: str
    event_date: date
    suppression_rule: str | None
    recorded_at: datetime


class AlertWithHistory(AlertRecord):
    """``alerts show``: the alert's record, its current status, the verdict in effect
    (``with_verdicts``) and every triage action."""

    status: str
    verdict: str | None
    verdict_source: str | None
    verdict_at: datetime | None
    history: list[TriageAction]


class AlertNotFoundError(UserError):
    """No scored day holds the alert id."""


class TransitionError(UserError):
    """The alert's status does not allow the action (an ack of a closed alert)."""


class UnreadableDaysError(UserError):
    """The alert is on no day that could be read, and some scored days could not be: it
    may be on one of them, so "not found" would be a guess."""


@dataclass(frozen=True)
class TriageResult:
    """What one action did: the alert's new status and any feedback or rule it wrote."""

    alert_id: str
    status: str
    verdict: str | None
    feedback_id: str | None
    suppression_rule: str | None
    stale_days: list[date] = field(default_factory=list)  # risk days a benign close made stale


def _text(value: str | None, field: str, limit: int = MAX_NOTE, lines: bool = True) -> str | None:
    """An analyst's free text by the analyst text rule (``uba.event_rules.check_text``, the
    one every way in applies): ``alerts show`` prints it, and an ANSI escape or a carriage
    return in it rewrote the reader's terminal (found by an attack). A note may hold line
    breaks and tabs (``lines``), a name none. Its length is counted as given, as the API
    counts it (``given_length_error``)."""
    too_long = given_length_error(value, limit)
    if too_long:
        raise UserError(f"{field}: {too_long}")
    return analyst_text(value, lines, f"{field}:")


def triage_log(data_dir: Path) -> pl.DataFrame:
    """Every action ever recorded, in write order."""
    parts = io.scan_table(data_dir, TRIAGE)
    if parts is None:
        return pl.DataFrame(schema=TRIAGE_SCHEMA)
    return parts.sort(["_part", "recorded_at"], maintain_order=True).select(list(TRIAGE_SCHEMA)).collect()


def triage_state(data_dir: Path) -> pl.DataFrame:
    """The latest action per alert: alert_id plus STATE_COLUMNS (no row: the alert is open)."""
    log = triage_log(data_dir)
    latest = log.group_by("alert_id", maintain_order=True).last()
    return latest.select("alert_id", "status", "note", "analyst", pl.col("recorded_at").alias("updated_at"))


def with_status(records: pl.DataFrame, state: pl.DataFrame) -> pl.DataFrame:
    """Records with their triage status (``open`` where nothing was recorded)."""
    joined = records.join(state, on="alert_id", how="left", maintain_order="left")
    return joined.with_columns(pl.col("status").fill_null("open"))


def with_verdicts(records: pl.DataFrame, verdicts: pl.DataFrame) -> pl.DataFrame:
    """Records with the verdict in effect (``verdict``, ``verdict_source``, ``verdict_at``;
    null without one) from ``io.verdicts_in_effect``, as entity risk reads it: under the
    alert id or, for an event alert given none there, under its event id (where both ids
    have one, both hold the later). The status stays the triage table's: a verdict given
    through ``uba-batch feedback`` or ``POST /feedback`` closes nothing."""
    named = verdicts.select(pl.col("event_id").alias("_id"), pl.col("label").alias("verdict"),
                            pl.col("source").alias("verdict_source"), pl.col("recorded_at").alias("verdict_at"))
    by_alert = records.join(named.rename({"_id": "alert_id"}), on="alert_id", how="left", maintain_order="left")
    by_event = named.rename({name: f"_e_{name}" for name in VERDICT_COLUMNS})
    event_key = pl.when((pl.col("alert_type") == "event") & pl.col("verdict").is_null()).then(pl.col("event_id"))
    joined = by_alert.with_columns(event_key.alias("_id")).join(by_event, on="_id", how="left",
                                                                  maintain_order="left")
    return joined.with_columns(pl.coalesce(name, f"_e_{name}").alias(name) for name in VERDICT_COLUMNS).drop(
        "_id", *(f"_e_{name}" for name in VERDICT_COLUMNS))


def scored_days(output_dir: Path) -> list[date]:
    """Days with a published run, newest first."""
    return sorted(io.run_manifest_dates(output_dir), reverse=True)


def recent_days(output_dir: Path, day: date | None, days: int) -> list[date]:
    """``day`` alone, else the ``days`` newest scored days (``alerts list``)."""
    return [day] if day is not None else scored_days(output_dir)[:days]


# What a scored day's published files can meet on disk: a manifest that is not JSON or
# not an object, a truncated or foreign part, a hand-made link. That part of the day is skipped.
UNREADABLE_DAY = (UserError, OSError, pl.exceptions.PolarsError)
RECORD_KINDS = ("alerts", "user-days", "risk")
SHOWN_PROBLEMS = 3


@dataclass
class DaySearch:
    """Reads the records of one search's days (``find_alert``, ``list_alerts``) kind by kind,
    skipping what does not read: each problem is logged once, naming the file, and the day
    is remembered with it. One damaged day answered 422 to PATCH /alerts/{id} of a good
    alert on another day (500 for a truncated ``flagged/`` part), and to every GET /alerts
    that covered it; the triage of every other day, and of the day's other kinds of alert,
    must not depend on it."""

    output_dir: Path
    risk_min_level: str = "low"
    unreadable: dict[date, str] = field(default_factory=dict)

    def __post_init__(self) -> None:  # a caller's mistake is refused, never taken for a damaged day
        if self.risk_min_level not in RISK_LEVELS:
            raise UserError(f"risk level {self.risk_min_level!r} is not one of {', '.join(RISK_LEVELS)}")

    def records(self, day: date, what: str) -> pl.DataFrame | None:
        """The ``what`` records of ``day`` (``alerts``, ``user-days``, ``risk`` or ``all``, as
        ``day_records``) that read; None when none of them does."""
        if what != "all" and what not in RECORD_KINDS:
            raise UserError(f"--what {what!r} is not one of {', '.join(RECORD_KINDS)}, all")
        # a day scored before entity risk existed has no risk records (not a damaged day)
        kinds = [k for k in (RECORD_KINDS if what == "all" else (what,)) if k != "risk" or self._has_risk(day)]
        frames = [frame for kind in kinds if (frame := self._read(day, kind)) is not None]
        if not frames:
            return None if kinds else pl.DataFrame(schema=RECORD_SCHEMA)
        return pl.concat(frames)

    def _has_risk(self, day: date) -> bool:
        """Whether ``day`` has a risk table to read. A listing that is refused (an entry
        named like a part that is not a file) counts as one, so ``_read`` skips and names
        the day instead of the refusal failing the whole search (a 422 to GET /alerts and
        to PATCH of a good alert on another day)."""
        try:
            return bool(io.partition_files(self.output_dir, io.RISK, day))
        except UNREADABLE_DAY:
            return True

    def _read(self, day: date, kind: str) -> pl.DataFrame | None:
        try:
            return day_records(self.output_dir, day, kind, self.risk_min_level)
        except DayNotScoredError:
            raise  # a date asked for that was never scored: the caller's error, as before
        except UNREADABLE_DAY as exc:
            problem = first_line(exc)
            known = self.unreadable.get(day)
            if known is None or problem not in known:  # a bad manifest fails every kind alike: said once
                log.warning("alert search: %s skipped, it does not read: %s", day.isoformat(), problem)
                self.unreadable[day] = problem if known is None else f"{known}; {problem}"
            return None

    def unreadable_note(self) -> str:
        """The skipped days and why, for an answer (the first few problems in full)."""
        days = sorted(self.unreadable)
        shown = "; ".join(f"{d.isoformat()}: {self.unreadable[d]}" for d in days[:SHOWN_PROBLEMS])
        rest = days[SHOWN_PROBLEMS:]
        more = f"; and {', '.join(d.isoformat() for d in rest)}" if rest else ""
        return f"{len(days)} scored day(s) could not be read ({shown}{more})"


@dataclass(frozen=True)
class AlertList:
    """``list_alerts``: the records found, and the days skipped because they do not read."""

    alerts: pl.DataFrame
    unreadable: dict[date, str]


def list_alerts(output_dir: Path, data_dir: Path, days: Sequence[date], statuses: Iterable[str] = STATUSES,
                what: str = "all", risk_min_level: str = "high") -> AlertList:
    """The records of ``days`` whose status is one of ``statuses``, newest day first; days
    that do not read are skipped and named (``DaySearch``)."""
    wanted = list(statuses)
    unknown = [s for s in wanted if s not in STATUSES]
    if unknown:
        raise UserError(f"status {unknown[0]!r} is not one of {', '.join(STATUSES)}")
    state = triage_state(data_dir)
    search = DaySearch(output_dir, risk_min_level)
    read = [search.records(day, what) for day in days]
    frames = [with_status(records, state) for records in read if records is not None]
    if not frames:
        frames = [with_status(pl.DataFrame(schema=RECORD_SCHEMA), state)]
    found = pl.concat(frames, how="vertical_relaxed").filter(pl.col("status").is_in(wanted))
    return AlertList(_views(found, io.verdicts_in_effect(data_dir)), search.unreadable)


def _views(found: pl.DataFrame, verdicts: pl.DataFrame) -> pl.DataFrame:
    """The listed records with their verdict in effect, the triage fields in their order."""
    listed = with_verdicts(found, verdicts)
    first = [c for c in listed.columns if c not in (*STATE_COLUMNS, *VERDICT_COLUMNS)]
    return listed.select(*first, "status", *VERDICT_COLUMNS, *STATE_COLUMNS[1:])


def find_alert(output_dir: Path, alert_id: str, days: Sequence[date] | None = None,
               risk_min_level: str = "low") -> AlertRecord:
    """The record of ``alert_id``, searched in ``days`` (default: every scored day, newest
    first); ids are hashes, so the day cannot be read off the id.

    Event and user-day alerts are searched before the risk tables, so an unreadable risk
    table of some day (named by ``read_risk``) is read only by a search for a risk alert.
    A day that does not read is skipped (``DaySearch``); when the alert is on none of the
    others, the answer names the skipped days (UnreadableDaysError), since it may be there."""
    alert_id = alert_id.strip()
    searched = list(days) if days is not None else scored_days(output_dir)
    search = DaySearch(output_dir, risk_min_level)
    for what in RECORD_KINDS:
        for day in searched:
            records = search.records(day, what)
            found = alert_records(records.filter(pl.col("alert_id") == alert_id)) if records is not None else []
            if found:
                return found[0]
    if search.unreadable:
        raise UnreadableDaysError(f"alert_id {alert_id!r} not found on the scored days that could be read, and "
                                  f"{search.unreadable_note()}: it may be on one of them; repair or re-score "
                                  "them (uba-batch score --date D) and retry")
    where = f"on {', '.join(d.isoformat() for d in days)}" if days else "on any scored day"
    raise AlertNotFoundError(f"alert_id {alert_id!r} not found {where} (see `uba-batch alerts list`)")


def alert_history(data_dir: Path, alert_id: str) -> list[TriageAction]:
    """Every action recorded for the alert, oldest first."""
    return cast(list[TriageAction], triage_log(data_dir).filter(pl.col("alert_id") == alert_id).to_dicts())


def alert_with_history(output_dir: Path, data_dir: Path, alert_id: str,
                       days: Sequence[date] | None = None) -> AlertWithHistory:
    """The alert's record with its current status and every triage action (``alerts show``)."""
    record = find_alert(output_dir, alert_id, days)
    history = alert_history(data_dir, record["alert_id"])
    key = pl.DataFrame({"alert_id": [record["alert_id"]], "alert_type": [record["alert_type"]],
                        "event_id": [record["event_id"]]}, schema=dict.fromkeys(("alert_id", "alert_type", "event_id"),
                                                                                pl.String()))
    verdict = with_verdicts(key, io.verdicts_in_effect(data_dir)).row(0, named=True)
    return {**record, "status": history[-1]["status"] if history else "open", "verdict": verdict["verdict"],
            "verdict_source": verdict["verdict_source"], "verdict_at": verdict["verdict_at"], "history": history}


def current_status(data_dir: Path, alert_id: str) -> str:
    history = alert_history(data_dir, alert_id)
    return history[-1]["status"] if history else "open"


def _check_action(action: str, status: str, verdict: str | None, suppress_similar: bool,
                  alert: AlertRecord) -> None:
    if action not in ACTIONS:
        raise UserError(f"action {action!r} is not one of {', '.join(ACTIONS)}")
    if action not in ALLOWED[status]:
        raise TransitionError(f"alert {alert['alert_id']} is {status}: {action} is not possible "
                        f"(possible: {', '.join(ALLOWED[status])})")
    if action == "close" and verdict not in LABELS:
        raise UserError(f"verdict: {verdict!r} is not one of {', '.join(LABELS)} (a close needs one)")
    if action != "close" and verdict is not None:
        raise UserError(f"verdict: only a close takes a verdict, not {action}")
    if suppress_similar:
        if action != "close" or verdict != "benign":
            raise UserError("suppress_similar: only a close with verdict benign creates a suppression rule")
        if alert["alert_type"] != "event" or not alert.get("reason_kinds"):
            raise UserError(f"suppress_similar: a {alert['alert_type']} alert has no top reason kind of an "
                            "event to suppress; only event alerts can create a rule")
        if alert["user_id"].strip() == WILDCARD:
            # user ids come from logs an attacker may write: a user named "*" must not turn
            # one benign close into a rule that silences this reason kind for every user
            raise UserError(f"suppress_similar: the alert's user id is {WILDCARD!r}, which a suppression rule "
                            "reads as every user; close it without suppress_similar")


def apply_action(output_dir: Path, data_dir: Path, alert_id: str, action: str, verdict: str | None = None,
                 note: str | None = None, analyst: str | None = None, suppress_similar: bool = False,
                 days: Sequence[date] | None = None, max_id_length: int = 256) -> TriageResult:
    """Ack, close (with a verdict) or reopen one alert; checked whole before anything is written."""
    alert = find_alert(output_dir, alert_id, days)
    with io.table_lock(data_dir, TRIAGE):  # the status check and the writes as one step
        status = current_status(data_dir, alert["alert_id"])
        verdict = verdict.strip().lower() if verdict else None
        note, analyst = _text(note, "note"), _text(analyst, "analyst", MAX_ANALYST, lines=False)
        _check_action(action, status, verdict, suppress_similar, alert)
        feedback_id, pending = None, None
        if action == "close":
            feedback_id = alert["event_id"] if alert["alert_type"] == "event" else alert["alert_id"]
            pending = pending_feedback([{"event_id": feedback_id, "label": verdict, "analyst": analyst,
                                         "note": note}], source=f"triage:{alert['alert_id']}",
                                       max_id_length=max(max_id_length, len(alert["alert_id"])))
        rule = _suppression_rule(data_dir, alert, note) if suppress_similar else None
        # the rule, the stale marks and the verdict before the action row, which is the commit point
        stale = record_verdicts(data_dir, output_dir, pending).stale_days if pending is not None else []
        new_status = ACTIONS[action]
        row = pl.DataFrame([{
            "alert_id": alert["alert_id"], "action": action, "status": new_status, "verdict": verdict,
            "note": note, "analyst": analyst, "alert_type": alert["alert_type"], "user_id": alert["user_id"],
            "event_date": alert["event_date"], "suppression_rule": rule, "recorded_at": datetime.now(UTC),
        }], schema=TRIAGE_SCHEMA)
        io.append_table_part(row, data_dir, TRIAGE)
    return TriageResult(alert["alert_id"], new_status, verdict, feedback_id, rule, stale)


def _suppression_rule(data_dir: Path, alert: AlertRecord, note: str | None) -> str:
    """The rule of a ``--suppress-similar`` close: an active rule for the alert's user and
    top reason kind that never expires is reused, else one is added. A close killed after
    adding its rule and before its row (which is what makes the alert closed) left the
    alert open, and closing it again, as the analyst must, added the same rule a second
    time (found by an attack); each identical rule is one more to find and remove to undo
    it. Called under the triage lock, so two closes cannot both add it."""
    kinds = alert["reason_kinds"]
    assert kinds, "_check_action lets only an alert with reason kinds suppress similar ones"
    user = alert["user_id"].strip()
    same = active_rules(load_rules(data_dir), day=None).filter(
        (pl.col("user_id") == user) & (pl.col("reason_kind") == kinds[0]) & pl.col("expires").is_null())
    if same.height:
        return str(same["rule_id"][0])
    return add_rule(data_dir, user, kinds[0], known_reason_kinds(), note=note or f"benign alert {alert['alert_id']}")


def status_counts(data_dir: Path, records: pl.DataFrame) -> dict[str, dict[str, int]]:
    """How many of ``records`` are in each status, per alert type (every status listed, 0 included)."""
    counts: dict[str, dict[str, int]] = {}
    if records.height == 0:
        return counts
    statuses = with_status(records.select("alert_id", "alert_type"), triage_state(data_dir))
    for kind, status, n in statuses.group_by("alert_type", "status").len().iter_rows():
        counts.setdefault(kind, dict.fromkeys(STATUSES, 0))[status] = int(n)
    return counts
