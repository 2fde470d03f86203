"""`uba-batch feedback`: store analysts' benign/malicious labels for flagged events."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import click

from jobs.options import data_dir_option, output_dir_option, settings_from


@click.command(name="feedback")
@click.argument("csv_file", type=click.Path(dir_okay=False))
@data_dir_option
@output_dir_option
@click.pass_context
def command(ctx: click.Context, csv_file: str, data_dir: str | None, output_dir: str | None) -> None:
    """Record analyst labels from a CSV of event ids or alert ids.

    Columns: event_id (an event's id, or an alert id "uba-..." as the export and the
    entity risk contributions show, which is how a user-day alert gets a verdict), label
    (benign or malicious), optional analyst and note. The
    whole file is validated first (a bad row is named with its line and value, and
    nothing is stored); labels are appended under <data-dir>/feedback/ and the latest
    label per event wins. A row with no value at all (a blank line, a spreadsheet's ",,,")
    is skipped and counted. `uba-batch train --exclude-malicious` drops the events whose
    latest label is malicious. A benign label removes the alert's contribution to entity
    risk: the days whose risk it built are marked stale until re-scored (docs/risk.md); a
    malicious label that takes a benign one back puts it back and marks them too.

    \b
    Example:
      printf 'event_id,label,analyst\\nev-001,malicious,ann\\n' > labels.csv
      uba-batch feedback labels.csv --data-dir data
    """
    from uba.alerting.risk import record_verdicts_csv

    settings = settings_from(ctx, data_dir=data_dir, output_dir=output_dir)
    recorded = record_verdicts_csv(settings.paths.data_dir, settings.paths.output_dir, Path(csv_file),
                                   settings.events.max_string_length)
    summary, stale = recorded.summary, recorded.stale_days
    skipped = f"; skipped {summary.rows_blank} blank rows" if summary.rows_blank else ""
    click.echo(f"stored {summary.rows} labels ({summary.benign} benign, {summary.malicious} malicious) "
               f"in {summary.path}{skipped}")
    echo_stale_days(stale)


def echo_stale_days(stale: list[date]) -> None:
    """Say which days' entity risk a late verdict made stale and how to re-score them."""
    if stale:
        days = f"{stale[0]}" if len(stale) == 1 else f"{stale[0]}..{stale[-1]} ({len(stale)} days)"
        click.echo(f"entity risk of {days} marked stale: re-score {'it' if len(stale) == 1 else 'them'} with "
                   f"`uba-batch backfill --start {stale[0]} --end {stale[-1]}`")
