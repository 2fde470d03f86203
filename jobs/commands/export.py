"""`uba-batch export --date D --format ocsf|ecs|jsonl|csv`: a scored day's alerts for a SIEM."""

from __future__ import annotations

import sys
from datetime import date
from pathlib import Path

import click

from jobs.options import DATE, output_dir_option, settings_from


@click.command(name="export")
@click.option("--date", "day", type=DATE, required=True, help="Scored day to export.")
@click.option("--format", "fmt", type=click.Choice(["ocsf", "ecs", "jsonl", "csv"]), default="ocsf",
              show_default=True, help="OCSF 1.5.0 Detection Finding, ECS 9.2.0, the canonical record as JSON "
                                      "Lines, or CSV.")
@click.option("--what", type=click.Choice(["alerts", "user-days", "risk", "all"]), default="all",
              show_default=True, help="Flagged events (not suppressed), user-day alerts, users at or above "
                                      "--risk-level, or all of them (risk only when the day has it).")
@click.option("--risk-level", type=click.Choice(["low", "medium", "high", "critical"]), default="high",
              show_default=True, help="Lowest entity-risk level exported by --what risk/all.")
@click.option("--out", "out", default="-", show_default=True,
              help="File to write (replaced atomically), or - for standard output.")
@output_dir_option
@click.pass_context
def command(ctx: click.Context, day: date, fmt: str, what: str, risk_level: str, out: str,
            output_dir: str | None) -> None:
    """Export a scored day's findings, one record each, with stable alert ids.

    Every record carries the alert id (a hash of what was detected: re-scoring or a new
    model never renames a finding), the user, the time, the score and threshold, the
    reasons as text and as kinds, the model version and a reference to the run.
    docs/alerting.md maps every field.

    \b
    Example:
      uba-batch export --date 2026-03-22 --format ocsf --out alerts-2026-03-22.ocsf.jsonl
      uba-batch export --date 2026-03-22 --format ecs --what alerts | head -1
    """
    from uba.alerting.formats import day_export, write_export

    settings = settings_from(ctx, output_dir=output_dir)
    export = day_export(Path(settings.paths.output_dir), day, what, risk_level, fmt)
    if out == "-":
        for line in export.lines:
            sys.stdout.write(line)
        sys.stdout.flush()
        return
    write_export(export, Path(out))
    click.echo(f"exported {export.count} {what} record(s) of {day} as {fmt} to {out}", err=True)
