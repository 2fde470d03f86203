"""`uba-batch alerts`: triage of scored days' alerts (list, show, ack, close, reopen)."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path
from typing import Any

import click

from jobs.options import DATE, data_dir_option, output_dir_option, settings_from

WHAT = {"event": "alerts", "user-day": "user-days", "risk": "risk", "all": "all"}


@click.group(name="alerts")
def command() -> None:
    """Alerts of scored days: list them by status, show one, acknowledge, close with a verdict.

    An alert is a flagged event, a user-day alert or a user at high entity risk, named by
    its stable alert id (as `uba-batch export` writes it). Status: open, acknowledged,
    closed. A close records the verdict in the feedback store too.

    \b
    Example:
      uba-batch alerts list --days 3
      uba-batch alerts close uba-0123456789abcdef01234567 --verdict benign --note "admin maintenance"
    """


def _days(settings: Any, day: date | None, days: int) -> list[date]:
    from uba.alerts.triage import scored_days

    if day is not None:
        return [day]
    return scored_days(Path(settings.paths.output_dir))[:days]


def _short(record: dict[str, Any]) -> str:
    reasons = "; ".join(record.get("reasons") or [])
    score = record.get("score")
    return (f"{record['alert_id']}  {record['event_date']}  {record['alert_type']:<8} {record['severity'] or '-':<8} "
            f"{record['status']:<12} user={record['user_id']}  score={score:.3f}  {reasons[:100]}")


@command.command(name="list")
@click.option("--date", "day", type=DATE, default=None, help="Only this scored day (default: the newest --days).")
@click.option("--days", type=click.IntRange(1, 3650), default=7, show_default=True,
              help="How many of the newest scored days to list.")
@click.option("--status", type=click.Choice(["open", "acknowledged", "closed", "all"]), default="open",
              show_default=True)
@click.option("--type", "kind", type=click.Choice(list(WHAT)), default="all", show_default=True,
              help="Flagged events, user-day alerts, users at high entity risk, or all.")
@click.option("--format", "fmt", type=click.Choice(["text", "jsonl"]), default="text", show_default=True)
@click.option("--limit", type=click.IntRange(0, None), default=100, show_default=True, help="0: no limit.")
@output_dir_option
@data_dir_option
@click.pass_context
def list_command(ctx: click.Context, day: date | None, days: int, status: str, kind: str, fmt: str, limit: int,
                 output_dir: str | None, data_dir: str | None) -> None:
    """List alerts by status, newest day first, strongest first within a day.

    \b
    Example:
      uba-batch alerts list --status all --date 2026-03-22
      uba-batch alerts list --type user-day --format jsonl | head -3
    """
    from uba.alerts.triage import STATUSES, list_alerts

    settings = settings_from(ctx, output_dir=output_dir, data_dir=data_dir)
    statuses = STATUSES if status == "all" else (status,)
    found = list_alerts(Path(settings.paths.output_dir), Path(settings.paths.data_dir), _days(settings, day, days),
                        statuses, WHAT[kind])
    shown = found.head(limit) if limit else found
    for record in shown.to_dicts():
        click.echo(json.dumps(record, default=str) if fmt == "jsonl" else _short(record))
    if fmt == "text":
        more = f" (first {shown.height} shown; --limit 0 for all)" if shown.height < found.height else ""
        click.echo(f"{found.height} {status} alert(s){more}", err=True)


@command.command(name="show")
@click.argument("alert_id")
@click.option("--date", "day", type=DATE, default=None, help="The alert's day (default: search every scored day).")
@output_dir_option
@data_dir_option
@click.pass_context
def show_command(ctx: click.Context, alert_id: str, day: date | None, output_dir: str | None,
                 data_dir: str | None) -> None:
    """Show one alert as JSON: the record, its status and every triage action.

    \b
    Example:
      uba-batch alerts show uba-0123456789abcdef01234567
    """
    from uba.alerts.triage import alert_history, find_alert

    settings = settings_from(ctx, output_dir=output_dir, data_dir=data_dir)
    record = find_alert(Path(settings.paths.output_dir), alert_id, [day] if day else None)
    history = alert_history(Path(settings.paths.data_dir), record["alert_id"])
    record["status"] = history[-1]["status"] if history else "open"
    record["history"] = history
    click.echo(json.dumps(record, default=str, indent=2))


def _act(ctx: click.Context, alert_id: str, action: str, day: date | None, output_dir: str | None,
         data_dir: str | None, **kwargs: Any) -> None:
    from uba.alerts.triage import apply_action

    settings = settings_from(ctx, output_dir=output_dir, data_dir=data_dir)
    result = apply_action(Path(settings.paths.output_dir), Path(settings.paths.data_dir), alert_id, action,
                          days=[day] if day else None, max_id_length=settings.events.max_string_length, **kwargs)
    extra = ""
    if result.feedback_id is not None:
        extra += f"; verdict {result.verdict} stored as feedback for {result.feedback_id}"
    if result.suppression_rule is not None:
        extra += f"; suppression rule {result.suppression_rule} added (`uba-batch suppress list`)"
    click.echo(f"{result.alert_id}: {result.status}{extra}")


_note = click.option("--note", default=None, help="Free text kept with the action.")
_analyst = click.option("--analyst", default=None, help="Who acted (default: none recorded).")
_day = click.option("--date", "day", type=DATE, default=None,
                    help="The alert's day (default: search every scored day).")


@command.command(name="ack")
@click.argument("alert_id")
@_note
@_analyst
@_day
@output_dir_option
@data_dir_option
@click.pass_context
def ack_command(ctx: click.Context, alert_id: str, note: str | None, analyst: str | None, day: date | None,
                output_dir: str | None, data_dir: str | None) -> None:
    """Acknowledge an open alert: someone is looking at it.

    \b
    Example:
      uba-batch alerts ack uba-0123456789abcdef01234567 --analyst ann
    """
    _act(ctx, alert_id, "ack", day, output_dir, data_dir, note=note, analyst=analyst)


@command.command(name="close")
@click.argument("alert_id")
@click.option("--verdict", type=click.Choice(["benign", "malicious"]), required=True)
@click.option("--suppress-similar", is_flag=True,
              help="With --verdict benign: also add a suppression rule for this user and the alert's top "
                   "reason kind (event alerts), as `uba-batch suppress add` does.")
@_note
@_analyst
@_day
@output_dir_option
@data_dir_option
@click.pass_context
def close_command(ctx: click.Context, alert_id: str, verdict: str, suppress_similar: bool, note: str | None,
                  analyst: str | None, day: date | None, output_dir: str | None, data_dir: str | None) -> None:
    """Close an alert with a verdict, which is also stored as analyst feedback.

    The verdict reaches `train --exclude-malicious` (malicious event alerts) and entity
    risk (a benign verdict removes the alert's contribution).

    \b
    Example:
      uba-batch alerts close uba-0123456789abcdef01234567 --verdict benign --suppress-similar \\
          --note "backup job"
    """
    _act(ctx, alert_id, "close", day, output_dir, data_dir, verdict=verdict, note=note, analyst=analyst,
         suppress_similar=suppress_similar)


@command.command(name="reopen")
@click.argument("alert_id")
@_note
@_analyst
@_day
@output_dir_option
@data_dir_option
@click.pass_context
def reopen_command(ctx: click.Context, alert_id: str, note: str | None, analyst: str | None, day: date | None,
                   output_dir: str | None, data_dir: str | None) -> None:
    """Reopen an acknowledged or closed alert (its verdict stays in the feedback history).

    \b
    Example:
      uba-batch alerts reopen uba-0123456789abcdef01234567 --note "seen again"
    """
    _act(ctx, alert_id, "reopen", day, output_dir, data_dir, note=note, analyst=analyst)
