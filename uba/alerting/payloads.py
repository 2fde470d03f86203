"""What a sink receives for one alert, rendered once when the alert is enqueued.

- webhook ``ocsf`` / ``ecs`` / ``jsonl``: the same JSON object ``uba-batch export`` writes
  for that format (one line of the export); a batch is ``{"records": [...], ...}``
  (``webhook_body``);
- webhook ``slack``: one line of text; a batch is ``{"text": "line\\nline..."}``;
- syslog: a whole RFC 5424 message (without the RFC 6587 octet count, added on send)
  whose MSG is CEF or the canonical record as JSON.

Rendering at enqueue time means a retry sends exactly the bytes first tried, and what a
sink received can be told from the ledger alone.
"""

from __future__ import annotations

import hashlib
import json
import re
import socket
from collections.abc import Sequence

from uba import __version__
from uba.alerting.formats import ANALYTICS, JSON_FORMATS, _iso, _ms, to_plain
from uba.alerting.records import AlertRecord
from uba.settings import SyslogSink, WebhookSink

# --- webhook ---------------------------------------------------------------------------

SLACK_ICON = {"low": ":large_blue_circle:", "medium": ":large_yellow_circle:", "high": ":large_orange_circle:",
              "critical": ":red_circle:"}


def slack_line(record: AlertRecord) -> str:
    """One alert as a line of a Slack message (mrkdwn), with its id so people can find it."""
    reasons = list(record["reasons"] or [])
    title = f"{ANALYTICS[record['alert_type']][3]}: {record['user_id']}"
    text = f"{SLACK_ICON[record['severity']]} *{record['severity']}* {title} on {record['event_date']}"
    if reasons:
        text += f" - {reasons[0]}"
    return _slack_escape(text) + f" (`{record['alert_id']}`)"


def _slack_escape(text: str) -> str:
    """Slack's three control characters; user ids come from logs an attacker may write."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def webhook_payload(record: AlertRecord, fmt: str) -> str:
    """The stored payload of one alert for a webhook in ``fmt``."""
    if fmt == "slack":
        return slack_line(record)
    return json.dumps(JSON_FORMATS[fmt](record), ensure_ascii=False, sort_keys=True, separators=(",", ":"))


def delivery_id(sink: str, alert_ids: Sequence[str]) -> str:
    """``X-UBA-Delivery-Id``: the same alerts to the same sink always get the same id, so a
    receiver can drop a retried request whole; the alert ids inside stay the export's."""
    digest = hashlib.blake2b("\x1f".join((sink, *alert_ids)).encode(), digest_size=12).hexdigest()
    return f"uba-d-{digest}"


def webhook_body(sink: WebhookSink, alert_ids: Sequence[str], payloads: Sequence[str]) -> bytes:
    """A batch as one JSON document (the stored payloads are pasted in, not re-encoded)."""
    if sink.format == "slack":
        return json.dumps({"text": "\n".join(payloads)}, ensure_ascii=False).encode("utf-8")
    head = json.dumps({"delivery_id": delivery_id(sink.name, alert_ids), "sink": sink.name,
                       "format": sink.format, "count": len(alert_ids), "alert_ids": list(alert_ids)},
                      ensure_ascii=False)
    return (head[:-1] + ', "records": [' + ",".join(payloads) + "]}").encode("utf-8")


# --- syslog: CEF -------------------------------------------------------------------------

CEF_SEVERITY = {"low": 3, "medium": 5, "high": 8, "critical": 10}
SYSLOG_SEVERITY = {"low": 5, "medium": 4, "high": 3, "critical": 2}  # notice, warning, error, critical
# custom CEF fields: (key, label key, label, record field)
CEF_CUSTOM = (
    ("cs1", "cs1Label", "reasonKinds", "reason_kinds"),
    ("cs2", "cs2Label", "modelVersion", "model_version"),
    ("cs3", "cs3Label", "runRef", "run_ref"),
    ("cs4", "cs4Label", "eventId", "event_id"),
    ("cs5", "cs5Label", "eventDate", "event_date"),
    ("cs6", "cs6Label", "runId", "run_id"),
    ("cfp1", "cfp1Label", "score", "score"),
    ("cfp2", "cfp2Label", "threshold", "threshold"),
)
CEF_LIST_SEPARATOR = " | "


def cef_header_escape(value: str) -> str:
    """CEF header fields: backslash and pipe are escaped with a backslash; a header is one line."""
    value = value.replace("\\", "\\\\").replace("|", "\\|")
    return value.replace("\r\n", " ").replace("\n", " ").replace("\r", " ")


def cef_value_escape(value: str) -> str:
    """CEF extension values: backslash and equals sign escaped, line breaks as ``\\n`` / ``\\r``
    (the pipe needs no escape there, per the CEF specification)."""
    return (value.replace("\\", "\\\\").replace("=", "\\=")
            .replace("\r\n", "\\n").replace("\n", "\\n").replace("\r", "\\r"))


def to_cef(record: AlertRecord) -> str:
    """One alert as a CEF:0 event. ``reasons`` are joined by `` | `` into ``msg``; the
    score and threshold are written with full precision (``repr``) so they parse back equal."""
    name, _, _, title = ANALYTICS[record["alert_type"]]
    header = ["CEF:0", "UBA", "UBA", __version__, record["alert_type"], f"{title}: {record['user_id']}",
              str(CEF_SEVERITY[record["severity"]])]
    plain: dict[str, object] = {**to_plain(record)}
    ext: list[tuple[str, str]] = [
        ("externalId", record["alert_id"]),
        ("rt", str(_ms(record["time"]))),
        ("suser", record["user_id"]),
        ("cat", record["alert_type"]),
        ("act", name),
        ("msg", CEF_LIST_SEPARATOR.join(record["reasons"] or [])),
    ]
    for key, label_key, label, field in CEF_CUSTOM:
        value = plain[field]
        if value is None:
            continue
        if isinstance(value, list):
            value = CEF_LIST_SEPARATOR.join(str(v) for v in value)
        elif isinstance(value, float):
            value = repr(value)
        ext += [(label_key, label), (key, str(value))]
    return "|".join(cef_header_escape(h) for h in header) + "|" + " ".join(
        f"{k}={cef_value_escape(v)}" for k, v in ext)


# --- syslog: RFC 5424 --------------------------------------------------------------------

SD_ID = "uba@32473"  # 32473: the private enterprise number RFC 5612 reserves for examples
_UNSAFE_HOST = re.compile(r"[^\x21-\x7e]")


def _hostname() -> str:
    """RFC 5424 HOSTNAME: printable ASCII, at most 255 characters."""
    name = _UNSAFE_HOST.sub("-", socket.gethostname())[:255]
    return name or "-"


def sd_param_escape(value: str) -> str:
    """RFC 5424 PARAM-VALUE: ``"``, ``\\`` and ``]`` are escaped with a backslash."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")


def syslog_message(record: AlertRecord, sink: SyslogSink, hostname: str | None = None) -> str:
    """A full RFC 5424 message: ``<PRI>1 TIMESTAMP HOST APP - MSGID [uba@32473 ...] MSG``.

    TIMESTAMP is the alert's time (so a retry sends the same bytes), MSGID its type,
    the structured data carries the alert id and event date, MSG is CEF or JSON (no BOM:
    RFC 5424 allows MSG-ANY, and many collectors mangle a BOM)."""
    pri = sink.facility * 8 + SYSLOG_SEVERITY[record["severity"]]
    payload = to_cef(record) if sink.payload == "cef" else json.dumps(
        to_plain(record), ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    sd = (f'[{SD_ID} alert_id="{sd_param_escape(record["alert_id"])}" '
          f'event_date="{record["event_date"].isoformat()}" severity="{record["severity"]}"]')
    msgid = record["alert_type"].upper()[:32]
    return f"<{pri}>1 {_iso(record['time'])} {hostname or _hostname()} {sink.app_name} - {msgid} {sd} {payload}"


def octet_frame(message: str) -> bytes:
    """RFC 6587 octet counting: ``MSG-LEN SP SYSLOG-MSG``, the length in bytes."""
    data = message.encode("utf-8")
    return f"{len(data)} ".encode("ascii") + data


def payload_for(record: AlertRecord, sink: WebhookSink | SyslogSink) -> str:
    """The stored payload of ``record`` for ``sink`` (see the module doc)."""
    if isinstance(sink, WebhookSink):
        return webhook_payload(record, sink.format)
    return syslog_message(record, sink)
