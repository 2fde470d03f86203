"""``uba-batch alerts``: the delivery outbox (issue 15 items 2-3) from the command line.

``deliver`` sends what is pending, ``list`` shows the outbox (``--pending``,
``--failed`` dead letters), ``retry-failed`` queues dead letters again. The triage
lifecycle (item 4: show, ack, close and open/acknowledged/closed listing) will join
this group.
"""

from __future__ import annotations

import json
from datetime import UTC, date, datetime

import click

from jobs.options import DATE, data_dir_option, output_dir_option, settings_from


@click.group(name="alerts")
def command() -> None:
    """Alert delivery to webhooks and syslog: deliver, list the outbox, retry dead letters.

    Sinks are configured under alerting.sinks in the settings YAML; `score` and
    `backfill` enqueue each published day's alerts and deliver them. See
    docs/alerting.md#delivery.

    \b
    Example:
      uba-batch --config prod.yaml alerts deliver
      uba-batch alerts list --pending
      uba-batch alerts list --failed --sink siem
    """


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
    from uba.alerts.delivery import catch_up, check_sinks, deliver, select_sinks
    from uba.alerts.ledger import PENDING

    settings = settings_from(ctx, data_dir=data_dir, output_dir=output_dir)
    sinks = select_sinks(check_sinks(settings), sink_names)
    if not sinks:
        click.echo("no alerting sinks configured (alerting.sinks): nothing to deliver")
        return
    enqueued = catch_up(settings, sinks, days)
    for day, added in sorted(enqueued.items()):
        click.echo(f"enqueued {day}: " + ", ".join(f"{n} new for {s}" for s, n in added.items()))
    reports = deliver(settings, sinks, budget_sec)
    for report in reports:
        click.echo(report.line())
    if any(r.totals[PENDING] for r in reports):
        ctx.exit(2)


def _when(epoch: float | None) -> str:
    return "-" if epoch is None else datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@command.command(name="list")
@click.option("--pending", "status", flag_value="pending", help="Alerts not yet acknowledged by their sink.")
@click.option("--failed", "status", flag_value="failed", help="Dead letters: alerts a sink refused for good.")
@click.option("--delivered", "status", flag_value="delivered", help="Alerts their sink acknowledged.")
@click.option("--sink", default=None, metavar="NAME", help="Only this sink.")
@click.option("--date", "day", type=DATE, default=None, help="Only alerts of this day.")
@click.option("--limit", type=click.IntRange(min=1), default=100, show_default=True, help="At most this many rows.")
@click.option("--json", "as_json", is_flag=True, default=False, help="One JSON object per line.")
@data_dir_option
@click.pass_context
def list_command(ctx: click.Context, status: str | None, sink: str | None, day: date | None, limit: int,
                 as_json: bool, data_dir: str | None) -> None:
    """List the delivery outbox: counts per sink, or the alerts with one status.

    Without --pending/--failed/--delivered, prints per sink how many alerts are
    pending, delivered and failed, and the oldest pending day.

    \b
    Example:
      uba-batch alerts list
      uba-batch alerts list --pending --sink siem
      uba-batch alerts list --failed --json
    """
    from uba.alerts.ledger import Ledger, ledger_exists

    settings = settings_from(ctx, data_dir=data_dir)
    if not ledger_exists(settings.paths.data_dir):
        click.echo("no delivery ledger yet (no alerting sink has been used with this data directory)")
        return
    with Ledger.open(settings.paths.data_dir) as ledger:
        if status is None:
            counts = ledger.counts()
            click.echo(f"{'sink':<20}{'pending':>9}{'delivered':>11}{'failed':>8}  oldest pending")
            for name, c in sorted(counts.items()):
                if sink is None or name == sink:
                    click.echo(f"{name:<20}{c['pending']:>9}{c['delivered']:>11}{c['failed']:>8}  "
                               f"{ledger.oldest_pending_day(name) or '-'}")
            return
        rows = ledger.rows(status=status, sink=sink, day=day, limit=limit)
    for row in rows:
        if as_json:
            click.echo(json.dumps({"sink": row.sink, "alert_id": row.alert_id, "day": row.day,
                                   "alert_type": row.alert_type, "user_id": row.user_id, "status": row.status,
                                   "attempts": row.attempts, "last_error": row.last_error,
                                   "enqueued_at": _when(row.enqueued_at), "delivered_at": _when(row.delivered_at)}))
        else:
            click.echo(f"{row.day}  {row.sink:<16} {row.alert_id}  {row.alert_type:<8} {row.user_id:<12} "
                       f"attempts {row.attempts}" + (f"  {row.last_error}" if row.last_error else ""))
    if not as_json:
        click.echo(f"{len(rows)} {status} alert(s)" + (f" (limit {limit})" if len(rows) == limit else ""), err=True)


@command.command(name="retry-failed")
@click.option("--sink", default=None, metavar="NAME", help="Only this sink's dead letters.")
@click.option("--alert-id", "alert_ids", multiple=True, metavar="ID", help="Only these alerts (repeatable).")
@data_dir_option
@click.pass_context
def retry_failed_command(ctx: click.Context, sink: str | None, alert_ids: tuple[str, ...],
                         data_dir: str | None) -> None:
    """Put dead letters back in the queue (after fixing what the receiver refused).

    They are sent by the next `alerts deliver` or score run, before later days' alerts
    (delivery goes in day order).

    \b
    Example:
      uba-batch alerts retry-failed --sink siem
      uba-batch alerts retry-failed --alert-id uba-0123456789abcdef01234567 && uba-batch alerts deliver
    """
    from uba.alerts.ledger import Ledger

    settings = settings_from(ctx, data_dir=data_dir)
    with Ledger.open(settings.paths.data_dir) as ledger:
        moved = ledger.retry_failed(sink, alert_ids)
    click.echo(f"{moved} dead letter(s) queued again; run `uba-batch alerts deliver` to send them")
