"""`uba-batch report --date D`: a self-contained HTML page for analysts."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import click

from jobs.options import DATE, data_dir_option, output_dir_option, settings_from


@click.command(name="report")
@click.option("--date", "day", type=DATE, required=True, help="Scored day to report on.")
@click.option("--out", "out", type=click.Path(dir_okay=False), default=None,
              help="HTML file to write (default: <output-dir>/reports/report-<date>.html).")
@click.option("--history-days", type=click.IntRange(1, 366), default=14, show_default=True,
              help="Previous days (run manifests) shown for comparison.")
@click.option("--top", type=click.IntRange(1, 1000), default=15, show_default=True,
              help="Users listed in the top-users table.")
@output_dir_option
@data_dir_option
@click.pass_context
def command(ctx: click.Context, day: date, out: str | None, history_days: int, top: int,
            output_dir: str | None, data_dir: str | None) -> None:
    """Write the daily report: alerts vs history, top users by risk with reasons,
    user-day alerts, drift status, model version, suppressed alerts and the day's
    findings by triage status (the triage table lives under --data-dir).

    The page is one file with inline CSS and embedded PNG charts: no scripts and no
    external assets, so it opens anywhere, offline.

    \b
    Example:
      uba-batch score --date 2026-03-22 --data-dir data --model-dir models --output-dir output
      uba-batch report --date 2026-03-22 --output-dir output --out report.html
    """
    from uba.report import write_report

    settings = settings_from(ctx, output_dir=output_dir, data_dir=data_dir)
    path = write_report(settings, day, Path(out) if out else None, history_days, top)
    click.echo(f"report: {path}")
