"""`uba-batch alerts`: triage of scored days' alerts (list, show, ack, close, reopen) and
their delivery to webhooks and syslog (deliver, list --pending/--failed, outbox, retry-failed)."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import click

from jobs.commands.feedback import echo_stale_days
from jobs.options import DATE, data_dir_option, output_dir_option, settings_from

WHAT = {"event": "alerts", "user-day": "user-days", "risk": "risk", "all": "all"}


@click.group(name="alerts")
def command() -> None:
    """Alerts of scored days: list them by status, show one, acknowledge, close with a verdict.

    An alert is a flagged event, a user-day alert or a user at high entity risk, named by
    its stable alert id (as `uba-batch export` writes it). Status: open, acknowledged,
    closed. A close records the verdict in the feedback store too; `list` and `show` give
    each alert the verdict in effect, also one given through `uba-batch feedback` or
    POST /feedback, with its source (verdict_source, verdict_at).

    Delivery: sinks under alerting.sinks in the settings YAML get each published day's
    alerts through a durable outbox; `deliver` sends what is pending, `list --pending` /
    `list --failed` show the outbox and its dead letters (docs/alerting.md#delivery).

    \b
    Example:
      uba-batch alerts list --days 3
      uba-batch alerts close uba-0123456789abcdef01234567 --verdict benign --note "admin maintenance"
      uba-batch --config prod.yaml alerts deliver
      uba-batch alerts list --failed --sink siem
    """


def _short(record: dict[str, Any]) -> str:
    from uba.alerting.formats import text_id

    reasons = "; ".join(record.get("reasons") or [])
    score = record.get("score")
    # the source may name a CSV file, whose name may hold anything: quoted with escapes (repr)
    verdict = f"verdict={record['verdict']} from {record['verdict_source']!r}  " if record.get("verdict") else ""
    return (f"{record['alert_id']}  {record['event_date']}  {record['alert_type']:<8} {record['severity'] or '-':<8} "
            f"{record['status']:<12} {verdict}user={text_id(record['user_id'])}  score={score:.3f}  {reasons[:100]}")


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
@click.option("--pending", "delivery", flag_value="pending",
              help="Instead: the delivery outbox's alerts not yet acknowledged by their sink.")
@click.option("--failed", "delivery", flag_value="failed",
              help="Instead: the dead letters, alerts a sink refused for good (with its answer).")
@click.option("--delivered", "delivery", flag_value="delivered", help="Instead: alerts their sink acknowledged.")
@click.option("--sink", default=None, metavar="NAME", help="With --pending/--failed/--delivered: only this sink.")
@output_dir_option
@data_dir_option
@click.pass_context
def list_command(ctx: click.Context, day: date | None, days: int, status: str, kind: str, fmt: str, limit: int,
                 delivery: str | None, sink: str | None, output_dir: str | None, data_dir: str | None) -> None:
    """List alerts by status, newest day first, strongest first within a day.

    With --pending, --failed or --delivered, lists the delivery outbox instead: per sink
    in delivery order (day, then queue order), with attempts and the last error.

    \b
    Example:
      uba-batch alerts list --status all --date 2026-03-22
      uba-batch alerts list --type user-day --format jsonl | head -3
      uba-batch alerts list --failed --sink siem
    """
    from uba.alerting.formats import json_ready
    from uba.alerting.triage import STATUSES, list_alerts, recent_days

    settings = settings_from(ctx, output_dir=output_dir, data_dir=data_dir)
    if delivery is not None:
        _list_outbox(Path(settings.paths.data_dir), delivery, sink, day, limit, fmt)
        return
    statuses = STATUSES if status == "all" else (status,)
    output = Path(settings.paths.output_dir)
    listed = list_alerts(output, Path(settings.paths.data_dir), recent_days(output, day, days), statuses, WHAT[kind])
    found = listed.alerts
    shown = found.head(limit) if limit else found
    for record in shown.to_dicts():
        click.echo(json.dumps(json_ready(record)) if fmt == "jsonl" else _short(record))
    if fmt == "text":
        more = f" (first {shown.height} shown; --limit 0 for all)" if shown.height < found.height else ""
        skipped = sorted(listed.unreadable)  # each logged above with its file
        unread = (f"; {len(skipped)} day(s) skipped, they do not read: {', '.join(d.isoformat() for d in skipped)}"
                  if skipped else "")
        click.echo(f"{found.height} {status} alert(s){more}{unread}", err=True)


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
    from uba.alerting.formats import json_ready
    from uba.alerting.triage import alert_with_history

    settings = settings_from(ctx, output_dir=output_dir, data_dir=data_dir)
    record = alert_with_history(Path(settings.paths.output_dir), Path(settings.paths.data_dir), alert_id,
                                [day] if day else None)
    click.echo(json.dumps(json_ready(record), indent=2))


def _act(ctx: click.Context, alert_id: str, action: str, day: date | None, output_dir: str | None,
         data_dir: str | None, **kwargs: Any) -> None:
    from uba.alerting.triage import apply_action

    settings = settings_from(ctx, output_dir=output_dir, data_dir=data_dir)
    result = apply_action(Path(settings.paths.output_dir), Path(settings.paths.data_dir), alert_id, action,
                          days=[day] if day else None, max_id_length=settings.events.max_string_length, **kwargs)
    extra = ""
    if result.feedback_id is not None:
        extra += f"; verdict {result.verdict} stored as feedback for {result.feedback_id}"
    if result.suppression_rule is not None:
        extra += f"; suppression rule {result.suppression_rule} in force (`uba-batch suppress list`)"
    click.echo(f"{result.alert_id}: {result.status}{extra}")
    echo_stale_days(result.stale_days)


def _action_options(func: Any) -> Any:
    """The alert id and the options every triage action takes (note, analyst, day, folders)."""
    for option in reversed((
        click.argument("alert_id"),
        click.option("--note", default=None, help="Free text kept with the action."),
        click.option("--analyst", default=None, help="Who acted (default: none recorded)."),
        click.option("--date", "day", type=DATE, default=None,
                     help="The alert's day (default: search every scored day)."),
        output_dir_option, data_dir_option, click.pass_context,
    )):
        func = option(func)
    return func


@command.command(name="ack")
@_action_options
def ack_command(ctx: click.Context, alert_id: str, note: str | None, analyst: str | None, day: date | None,
                output_dir: str | None, data_dir: str | None) -> None:
    """Acknowledge an open alert: someone is looking at it.

    \b
    Example:
      uba-batch alerts ack uba-0123456789abcdef01234567 --analyst ann
    """
    _act(ctx, alert_id, "ack", day, output_dir, data_dir, note=note, analyst=analyst)


@command.command(name="close")
@click.option("--verdict", type=click.Choice(["benign", "malicious"]), required=True)
@click.option("--suppress-similar", is_flag=True,
              help="With --verdict benign: also add a suppression rule for this user and the alert's top "
                   "reason kind (event alerts), as `uba-batch suppress add` does.")
@_action_options
def close_command(ctx: click.Context, alert_id: str, verdict: str, suppress_similar: bool, note: str | None,
                  analyst: str | None, day: date | None, output_dir: str | None, data_dir: str | None) -> None:
    """Close an alert with a verdict, which is also stored as analyst feedback.

    The verdict reaches `train --exclude-malicious` (malicious event alerts) and entity
    risk (a benign verdict removes the alert's contribution: the days whose risk it built
    are marked stale until re-scored, as with `uba-batch feedback`).

    \b
    Example:
      uba-batch alerts close uba-0123456789abcdef01234567 --verdict benign --suppress-similar \\
          --note "backup job"
    """
    _act(ctx, alert_id, "close", day, output_dir, data_dir, verdict=verdict, note=note, analyst=analyst,
         suppress_similar=suppress_similar)


@command.command(name="reopen")
@_action_options
def reopen_command(ctx: click.Context, alert_id: str, note: str | None, analyst: str | None, day: date | None,
                   output_dir: str | None, data_dir: str | None) -> None:
    """Reopen an acknowledged or closed alert (its verdict stays in the feedback history).

    \b
    Example:
      uba-batch alerts reopen uba-0123456789abcdef01234567 --note "seen again"
    """
    _act(ctx, alert_id, "reopen", day, output_dir, data_dir, note=note, analyst=analyst)


# --- delivery ---------------------------------------------------------


def _when(epoch: float | None) -> str:
    return "-" if epoch is None else datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _list_outbox(data_dir: Path, status: str, sink: str | None, day: date | None, limit: int, fmt: str) -> None:
    """``alerts list --pending|--failed|--delivered``: rows of the delivery ledger."""
    from uba.alerting.formats import text_id
    from uba.alerting.ledger import outbox_rows

    rows = outbox_rows(data_dir, status, sink, day, limit or None)
    if rows is None:
        click.echo("no delivery ledger yet (no alerting sink has been used with this data directory)", err=True)
        return
    for row in rows:
        if fmt == "jsonl":
            click.echo(json.dumps({"sink": row.sink, "alert_id": row.alert_id, "day": row.day,
                                   "alert_type": row.alert_type, "user_id": row.user_id, "status": row.status,
                                   "attempts": row.attempts, "last_error": row.last_error,
                                   "enqueued_at": _when(row.enqueued_at), "delivered_at": _when(row.delivered_at)}))
        else:
            click.echo(f"{row.alert_id}  {row.day}  {row.sink:<16} {row.alert_type:<8} user={text_id(row.user_id)}  "
                       f"attempts={row.attempts}" + (f"  {row.last_error}" if row.last_error else ""))
    if fmt == "text":
        shown = f" (limit {limit})" if limit and len(rows) == limit else ""
        click.echo(f"{len(rows)} {status} deliver{'y' if len(rows) == 1 else 'ies'}{shown}", err=True)


@command.command(name="deliver")
@click.option("--sink", "sink_names", multiple=True, metavar="NAME",
              help="Deliver to this sink only (repeatable; default: every configured sink).")
@click.option("--date", "days", type=DATE, multiple=True,
              help="Also enqueue this scored day for the sinks even if it was published before they were "
                   "configured (repeatable). Delivery itself always goes in day order from the oldest pending.")
@click.option("--budget-sec", type=click.FloatRange(min=0), default=None,
              help="Stop after this many seconds, leaving the rest pending (default: no limit).")
@data_dir_option
@output_dir_option
@click.pass_context
def deliver_command(ctx: click.Context, sink_names: tuple[str, ...], days: tuple[date, ...],
                    budget_sec: float | None, data_dir: str | None, output_dir: str | None) -> None:
    """Send every pending alert, per sink in day order; enqueue published days first.

    Published runs that were never enqueued (a run killed between publishing and
    enqueueing, or scored while delivery was off) are enqueued first, for days
    published since the sink was first seen; older days only with --date. Exit code 0
    when nothing is left pending, 2 when a sink did not take everything (the receiver
    is down or slow: run it again later), 1 for a configuration error.

    \b
    Example:
      uba-batch alerts deliver
      uba-batch alerts deliver --sink siem --date 2026-03-20 --date 2026-03-21
    """
    from uba.alerting.delivery import deliver_pending

    settings = settings_from(ctx, data_dir=data_dir, output_dir=output_dir)
    run = deliver_pending(settings, sink_names, days, budget_sec)
    if run is None:
        click.echo("no alerting sinks configured (alerting.sinks): nothing to deliver")
        return
    for day, added in sorted(run.enqueued.items()):
        click.echo(f"enqueued {day}: " + ", ".join(f"{n} new for {s}" for s, n in added.items()))
    for report in run.reports:
        click.echo(report.line())
    if run.left_pending:
        ctx.exit(2)


@command.command(name="outbox")
@data_dir_option
@click.pass_context
def outbox_command(ctx: click.Context, data_dir: str | None) -> None:
    """Per sink: alerts pending, delivered and failed (dead letters), and the oldest pending day.

    \b
    Example:
      uba-batch alerts outbox --data-dir data
    """
    from uba.alerting.ledger import sink_states

    settings = settings_from(ctx, data_dir=data_dir)
    states = sink_states(settings.paths.data_dir)
    if states is None:
        click.echo("no delivery ledger yet (no alerting sink has been used with this data directory)")
        return
    click.echo(f"{'sink':<20}{'pending':>9}{'delivered':>11}{'failed':>8}  oldest pending")
    for st in states:
        click.echo(f"{st.sink:<20}{st.pending:>9}{st.delivered:>11}{st.failed:>8}  {st.oldest_pending or '-'}")


@command.command(name="retry-failed")
@click.option("--sink", default=None, metavar="NAME", help="Only this sink's dead letters.")
@click.option("--alert-id", "alert_ids", multiple=True, metavar="ID", help="Only these alerts (repeatable).")
@data_dir_option
@click.pass_context
def retry_failed_command(ctx: click.Context, sink: str | None, alert_ids: tuple[str, ...],
                         data_dir: str | None) -> None:
    """Put dead letters back in the delivery queue (after fixing what the receiver refused).

    They are sent by the next `alerts deliver` or score run, before later days' alerts
    (delivery goes in day order).

    \b
    Example:
      uba-batch alerts retry-failed --sink siem
      uba-batch alerts retry-failed --alert-id uba-0123456789abcdef01234567 && uba-batch alerts deliver
    """
    from uba.alerting.ledger import retry_dead_letters

    settings = settings_from(ctx, data_dir=data_dir)
    moved = retry_dead_letters(settings.paths.data_dir, sink, alert_ids)
    click.echo(f"{moved} dead letter(s) queued again; run `uba-batch alerts deliver` to send them")
