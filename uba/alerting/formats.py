"""Render canonical alert records (``uba.alerting.records``) in the formats analysts' tools read.

- ``ocsf``: OCSF 1.5.0 Detection Finding (class 2004), one JSON object per line, with the
  reasons in ``anomaly_analyses`` (the object OCSF added for behavioural detections);
- ``ecs``: Elastic Common Schema 9.2.0 alert documents, one JSON object per line;
- ``jsonl``: the canonical record itself, one per line;
- ``csv``: the canonical record, lists joined with `` | ``.

docs/alerting.md maps every field. The versions are pinned here and in the vendored
schemas the tests validate against (tests/fixtures/ocsf-1.5.0, tests/fixtures/ecs-9.2.0).
"""

from __future__ import annotations

import csv
import io as stdio
import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import TypedDict

from uba import __version__, io
from uba.alerting.records import RECORD_SCHEMA, AlertRecord, alert_records, day_records
from uba.errors import UserError
from uba.schema import JsonValue

OCSF_VERSION = "1.5.0"
ECS_VERSION = "9.2.0"
FORMATS = ("ocsf", "ecs", "jsonl", "csv")
PRODUCT: dict[str, JsonValue] = {"name": "UBA", "vendor_name": "UBA", "version": __version__}
OCSF_SEVERITY = {"low": (2, "Low"), "medium": (3, "Medium"), "high": (4, "High"), "critical": (5, "Critical")}
OCSF_RISK_LEVEL = {"low": (1, "Low"), "medium": (2, "Medium"), "high": (3, "High"), "critical": (4, "Critical")}
# observable type_ids of OCSF 1.5.0: user.uid is "User Object: uid", user.name a username_t ("User Name")
OCSF_USER_OBSERVABLES = (("evidences.user.uid", 31, "User Object: uid"), ("evidences.user.name", 4, "User Name"))
ECS_SEVERITY = {"low": 21, "medium": 47, "high": 73, "critical": 99}  # Elastic's risk-score bands
ANALYTICS = {  # alert type -> (analytic name, OCSF analytic type_id, its caption, title)
    "event": ("uba per-user isolation forest", 4, "Learning (ML/DL)", "Unusual activity for this user"),
    "user_day": ("uba user-day rules", 3, "Statistical", "Unusual day for this user"),
    "risk": ("uba entity risk", 3, "Statistical", "User at elevated entity risk"),
}


def _ms(value: datetime) -> int:
    return int(value.timestamp() * 1000)


def _iso(value: datetime) -> str:
    return value.isoformat(timespec="microseconds").replace("+00:00", "Z")


def json_ready(value: object) -> object:
    """``value`` with every datetime written as the canonical record writes ``time``
    (RFC 3339, ``Z``) and every date as ``YYYY-MM-DD``, inside lists and dicts too.

    ``alerts list --format jsonl`` and ``alerts show`` printed Python's ``str`` of a
    datetime (``2026-03-22 02:30:35.584832+00:00``, a space where RFC 3339 parsers want
    ``T``) and ``GET /alerts`` orjson's ``+00:00``, while ``export --format jsonl`` wrote
    ``...Z``: one alert, three spellings. All three now call this."""
    if isinstance(value, datetime):
        return _iso(value)
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, dict):
        return {key: json_ready(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [json_ready(item) for item in value]
    return value


def text_id(value: str) -> str:
    """An id as a line of text shows it (``alerts list``): as it is when it is printable
    ASCII without spaces or quotes, else as a JSON string with every character outside
    ASCII escaped. Ids come from logs an attacker writes: ``user=admin`` was printed alike
    for ``admin`` and ``\\u0430dmin`` (a Cyrillic a), an id with spaces could write
    ``score=`` fields of its own into the line, and Hebrew letters reordered it."""
    if value.isascii() and value.isprintable() and not any(c in value for c in " \"'"):
        return value
    return json.dumps(value)


class PlainRecord(TypedDict):
    """An :class:`~uba.alerting.records.AlertRecord` as JSON values (the ``jsonl`` format)."""

    alert_id: str
    alert_type: str
    user_id: str
    time: str
    event_date: str
    event_id: str | None
    score: float
    threshold: float | None
    severity: str
    reasons: list[str]
    reason_kinds: list[str]
    model_version: str | None
    run_id: str
    run_ref: str


def _title(record: AlertRecord) -> str:
    return f"{ANALYTICS[record['alert_type']][3]}: {record['user_id']}"


def to_ocsf(record: AlertRecord) -> dict[str, JsonValue]:
    """One OCSF Detection Finding."""
    name, type_id, type_caption, _ = ANALYTICS[record["alert_type"]]
    severity_id, severity = OCSF_SEVERITY[record["severity"]]
    reasons, kinds = _texts(record["reasons"]), _texts(record["reason_kinds"])
    time_ms = _ms(record["time"])
    analytic: dict[str, JsonValue] = {"name": name, "type_id": type_id, "type": type_caption}
    if record["model_version"]:
        analytic["version"] = record["model_version"]
    finding: dict[str, JsonValue] = {
        "class_uid": 2004, "class_name": "Detection Finding", "category_uid": 2, "category_name": "Findings",
        "activity_id": 1, "activity_name": "Create", "type_uid": 200401, "type_name": "Detection Finding: Create",
        "time": time_ms, "severity_id": severity_id, "severity": severity, "status_id": 1, "status": "New",
        "message": reasons[0] if reasons else _title(record),
        "finding_info": {"uid": record["alert_id"], "title": _title(record), "desc": "; ".join(reasons),
                         "types": _json_list(kinds), "created_time": time_ms, "analytic": analytic},
        "metadata": {"product": PRODUCT, "version": OCSF_VERSION, "uid": record["alert_id"],
                     "correlation_uid": record["run_id"], "log_name": record["run_ref"]},
        "evidences": [{"user": {"uid": record["user_id"], "name": record["user_id"]},
                       **({"uid": record["event_id"], "name": "event"} if record["event_id"] else {})}],
        "anomaly_analyses": [{
            "analysis_targets": [{"name": record["user_id"], "type": "User"}],
            "anomalies": [{"observation_parameter": kind, "observations": [{"value": text}]}
                          for kind, text in zip(kinds, reasons, strict=False)] or
                         [{"observation_parameter": record["alert_type"], "observations": [{"value": _title(record)}]}],
        }],
        "unmapped": {"uba": {"alert_type": record["alert_type"], "score": record["score"],
                             "threshold": record["threshold"], "event_id": record["event_id"],
                             "event_date": record["event_date"].isoformat(), "run_ref": record["run_ref"]}},
        "is_alert": True,
        "observables": [{"name": name, "type_id": type_id, "type": caption, "value": record["user_id"]}
                        for name, type_id, caption in OCSF_USER_OBSERVABLES],
    }
    if record["alert_type"] == "risk":
        finding.update(_ocsf_risk(record))
    return finding


def _ocsf_risk(record: AlertRecord) -> dict[str, JsonValue]:
    """An entity-risk alert in Detection Finding's own risk attributes (``risk_score`` is an
    integer in OCSF; the exact score stays in ``unmapped.uba.score``)."""
    level_id, level = OCSF_RISK_LEVEL[record["severity"]]
    return {"risk_score": round(record["score"]), "risk_level_id": level_id, "risk_level": level}


def to_ecs(record: AlertRecord) -> dict[str, JsonValue]:
    """One ECS alert document. ``event.reason`` joins the reasons with ``; ``, which the
    sentences themselves contain ("...(41 min); it had 8..."), so the list is also in the
    custom field ``uba.reasons`` (a namespace of our own, as ECS asks of custom fields),
    and the threshold label has full precision (it had 6 decimals: a score just over
    its cut read as under it)."""
    name = ANALYTICS[record["alert_type"]][0]
    reasons, kinds = _texts(record["reasons"]), _texts(record["reason_kinds"])
    event: dict[str, JsonValue] = {
        "kind": "alert", "category": ["intrusion_detection"], "type": ["info"], "id": record["alert_id"],
        "code": record["alert_type"], "dataset": "uba.alerts", "module": "uba", "provider": "uba",
        "severity": ECS_SEVERITY[record["severity"]], "risk_score": float(record["score"]),
        "reason": "; ".join(reasons), "reference": record["run_ref"],
    }
    doc: dict[str, JsonValue] = {
        "uba": {"reasons": _json_list(reasons)},
        "@timestamp": _iso(record["time"]),
        "ecs": {"version": ECS_VERSION},
        "message": reasons[0] if reasons else _title(record),
        "event": event,
        "user": {"id": record["user_id"], "name": record["user_id"]},
        "related": {"user": [record["user_id"]]},
        "rule": {"name": name, "category": record["alert_type"], "ruleset": "uba",
                 **({"version": record["model_version"]} if record["model_version"] else {})},
        "tags": _json_list(kinds),
        "labels": {"uba_event_date": record["event_date"].isoformat(), "uba_run_id": record["run_id"],
                   **({"uba_event_id": record["event_id"]} if record["event_id"] else {}),
                   **({"uba_threshold": repr(record["threshold"])} if record["threshold"] is not None else {})},
    }
    return doc


def _texts(values: list[str] | None) -> list[str]:
    """A record's list of texts (null in the frame: none)."""
    return list(values or [])


def _json_list(values: list[str]) -> list[JsonValue]:
    return list(values)


def to_plain(record: AlertRecord) -> PlainRecord:
    """The canonical record as JSON-ready values."""
    return {**record, "time": _iso(record["time"]), "event_date": record["event_date"].isoformat(),
            "reasons": _texts(record["reasons"]), "reason_kinds": _texts(record["reason_kinds"])}


JSON_FORMATS: dict[str, Callable[[AlertRecord], dict[str, JsonValue] | PlainRecord]] = {
    "ocsf": to_ocsf, "ecs": to_ecs, "jsonl": to_plain,
}


def render(records: Iterable[AlertRecord], fmt: str) -> Iterable[str]:
    """Lines of text (with their newline) of ``records`` in ``fmt``."""
    if fmt == "csv":
        yield from _csv_lines(records)
        return
    convert = JSON_FORMATS[fmt]
    for record in records:
        yield json.dumps(convert(record), ensure_ascii=False, sort_keys=True) + "\n"


FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
# A formula character after a semicolon (and any quotes or spaces): where a spreadsheet that
# splits lines on ";" (Excel and LibreOffice in many locales) starts a cell, quotes or not.
FORMULA_AFTER_SEMICOLON = re.compile(r'(;[\s"]*)(?=[=+\-@])')


def csv_cell(value: object) -> object:
    """A text cell no spreadsheet runs as a formula (user ids and event ids come from logs
    an attacker can write): a ``'`` before a formula character at its start, and before one
    right after a ``;``. Quoting does not protect the second: LibreOffice opening the file
    with ``;`` as separator ran ``=1+1`` out of ``x;=1+1;`` and out of ``"x;=1+1;"`` alike.
    The ``jsonl`` format keeps every value as it was."""
    if not isinstance(value, str):
        return value
    value = FORMULA_AFTER_SEMICOLON.sub(r"\1'", value)
    return "'" + value if value.startswith(FORMULA_STARTS) else value


def _csv_lines(records: Iterable[AlertRecord]) -> Iterable[str]:
    buffer = stdio.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(RECORD_SCHEMA), lineterminator="\n")
    writer.writeheader()
    yield buffer.getvalue()
    buffer.seek(0)
    buffer.truncate()
    for record in records:
        row: dict[str, object] = {**to_plain(record)}
        row["reasons"] = " | ".join(_texts(record["reasons"]))
        row["reason_kinds"] = " | ".join(_texts(record["reason_kinds"]))
        writer.writerow({k: csv_cell(v) for k, v in row.items()})
        yield buffer.getvalue()
        buffer.seek(0)
        buffer.truncate()
    if buffer.getvalue():
        yield buffer.getvalue()


@dataclass(frozen=True)
class DayExport:
    """A scored day's findings rendered for ``uba-batch export``; ``lines`` is consumed once."""

    count: int
    lines: Iterable[str]


def day_export(output_dir: Path, day: date, what: str, risk_min_level: str, fmt: str) -> DayExport:
    """The ``what`` records of ``day`` in ``fmt``, rendered lazily so standard output streams."""
    records = alert_records(day_records(output_dir, day, what, risk_min_level))
    return DayExport(len(records), render(records, fmt))


def write_export(export: DayExport, path: Path) -> None:
    """Replace ``path`` atomically with the export; a path that cannot be written is one line."""
    try:
        io.write_bytes_atomic("".join(export.lines).encode("utf-8"), path)
    except OSError as exc:
        raise UserError(f"cannot write {path}: {exc.strerror or exc}") from exc
