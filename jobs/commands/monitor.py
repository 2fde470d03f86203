"""`uba-batch monitor --start A --end B`: drift and alert rate over time, from run manifests."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import click

from jobs.options import DATE, data_dir_option, output_dir_option, settings_from


def _fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


@click.command(name="monitor")
@click.option("--start", type=DATE, required=True, help="First day.")
@click.option("--end", type=DATE, required=True, help="Last day (inclusive).")
@click.option("--png", "png", type=click.Path(dir_okay=False), default=None,
              help="Chart to write (default: <output-dir>/monitoring/monitor-<start>_<end>.png).")
@data_dir_option
@output_dir_option
@click.pass_context
def command(ctx: click.Context, start: date, end: date, png: str | None, data_dir: str | None,
            output_dir: str | None) -> None:
    """Print per-day drift (PSI vs the training reference) and alert rate, chart them,
    and say whether retraining is advisable.

    Reads runs/event_date=*/manifest.json written by `score`; days without a run are
    listed as missing, and days whose entity risk is stale (an earlier day was re-scored,
    or a benign verdict arrived, after they were scored) are named with the reason.
    Limits come from the monitoring settings (psi_warn, psi_drift, alert_rate_tolerance).
    With alert delivery configured, also lists per sink the alerts still pending and the
    dead letters, from the delivery ledger.

    \b
    Example:
      uba-batch backfill --start 2026-03-22 --end 2026-03-28
      uba-batch monitor --start 2026-03-22 --end 2026-03-28 --output-dir output
    """
    from uba.alerting.ledger import sink_states
    from uba.monitoring.runs import monitor_days

    settings = settings_from(ctx, data_dir=data_dir, output_dir=output_dir)
    summary = monitor_days(settings, start, end, Path(png) if png else None)
    unit = "xs" if summary.judged_by_excess else "PSI"
    click.echo(f"{'date':<12}{'scored':>8}{'alerts':>8}{'rate':>8}{'expect':>8}{'feat' + unit:>9}"
               f"{'score' + unit:>10}  {'status':<6} top feature")
    for r in summary.rows:
        click.echo(f"{r['date']:<12}{r['scored']:>8}{r['alerts']:>8}{_fmt(r['alert_rate'], 4):>8}"
                   f"{_fmt(r['expected_alert_rate'], 4):>8}{_fmt(r['feature_judged']):>9}"
                   f"{_fmt(r['score_judged']):>10}  {r['status']:<6} {r['max_feature'] or '-'}")
    if summary.judged_by_excess:
        click.echo("xs = excess PSI over what chance gives for the day's users (monitoring.confidence); "
                   "the verdict compares it with psi_warn and psi_drift")
    if summary.missing:
        click.echo(f"no run for: {', '.join(d.isoformat() for d in summary.missing)}")
    for day, entry in summary.stale:
        click.echo(f"entity risk stale on {day}: {entry.get('reason')} (changed day {entry.get('changed_day')})")
    if summary.stale:
        click.echo(f"re-score the stale days in date order: uba-batch backfill --start {summary.stale[0][0]} "
                   f"--end {summary.stale[-1][0]}")
    click.echo(f"chart: {summary.chart}")
    click.echo(summary.advice or "no retraining needed: no day drifted beyond the configured limits")
    for state in sink_states(Path(settings.paths.data_dir)) or []:
        oldest = f" (oldest {state.oldest_pending})" if state.oldest_pending else ""
        click.echo(f"delivery {state.sink}: {state.pending} pending{oldest}, {state.failed} failed "
                   f"(dead letters: `uba-batch alerts list --failed`), {state.delivered} delivered  "
                   f"[{'attention' if state.needs_attention else 'ok'}]")
