"""`uba-batch tables compact`: merge the analysts' append-only tables into one part each."""

from __future__ import annotations

from pathlib import Path

import click

from jobs.options import data_dir_option, settings_from
from uba.logs import printable_line

TABLE_NAMES = ("feedback", "suppressions", "triage")  # uba.alerting.compaction.TABLES, without importing it


@click.group(name="tables")
def command() -> None:
    """The analysts' append-only tables (feedback, suppressions, triage).

    \b
    Example:
      uba-batch tables compact --data-dir data
    """


@command.command(name="compact")
@click.option("--table", "tables", type=click.Choice(TABLE_NAMES), multiple=True,
              help="Only this table (repeatable; default: all three).")
@data_dir_option
@click.pass_context
def compact_command(ctx: click.Context, tables: tuple[str, ...], data_dir: str | None) -> None:
    """Merge each table's parts into one part, losing nothing and changing no answer.

    Every verdict, close and rule is stored as one Parquet part, and every reader opens
    them all, so the tables slow down as they grow; score and backfill already merge a
    table once it holds scoring.compact_tables_after_parts parts. The merge keeps every
    row in its order and is safe beside running jobs, the API and analysts: an append in
    flight is waited for (up to 60 s), and a compaction stopped midway leaves the table
    whole (the next one tidies it).

    \b
    Example:
      uba-batch tables compact --data-dir data
      uba-batch tables compact --table feedback --table triage --data-dir data
    """
    from uba.alerting.compaction import TABLES

    settings = settings_from(ctx, data_dir=data_dir)
    failed = [table for table in tables or TABLES if not _compact_one(settings.paths.data_dir, table)]
    if failed:
        ctx.exit(1)


def _compact_one(data_dir: Path, table: str) -> bool:
    """One table's line (its error's, when it cannot be merged); False when it failed. A
    table that failed used to end the command there: the tables merged before it were
    merged without a line, and those after it were not tried (found by an attack)."""
    from uba.alerting.compaction import compact_table
    from uba.errors import UserError
    from uba.io import os_error_reason

    try:
        click.echo(compact_table(data_dir, table).line())
    except (UserError, OSError) as exc:
        reason = os_error_reason(exc) if isinstance(exc, OSError) else None
        click.echo(f"error: {table}: not compacted: {printable_line(reason or str(exc))}", err=True)
        return False
    return True
