"""`uba-batch monitor --start A --end B`: drift and alert rate over time, from run manifests."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import click

from jobs.options import DATE, data_dir_option, output_dir_option, settings_from


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
    from uba.monitoring.runs import monitor_lines

    settings = settings_from(ctx, data_dir=data_dir, output_dir=output_dir)
    for line in monitor_lines(settings, start, end, Path(png) if png else None):
        click.echo(line)
