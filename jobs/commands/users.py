"""`uba-batch users import FILE`: store the optional user directory (department, role,
privilege, criticality)."""

from __future__ import annotations

from pathlib import Path

import click

from jobs.options import data_dir_option, settings_from

QUARANTINE_EXIT_CODE = 2  # as ingest: stored what it could, but too much went to quarantine
MAX_IGNORED_NAMES = 10  # a wide HR export names its first few ignored columns only


@click.group(name="users")
def command() -> None:
    """The user directory: who each user is, for entity risk and peer groups.

    \b
    Example:
      uba-batch users import hr_export.csv --data-dir data
    """


@command.command(name="import")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--replace", is_flag=True, help="The file is the whole directory: users it does not list are "
                                              "removed (default: they are kept, listed users are updated).")
@data_dir_option
@click.pass_context
def import_command(ctx: click.Context, file: str, replace: bool, data_dir: str | None) -> None:
    """Import users from a CSV or Parquet file (an HR or IdP export).

    Columns: user_id (required), department, role, is_privileged (true/false, yes/no,
    1/0; empty is false), criticality (low, medium, high, critical; empty is unknown).
    Other columns are ignored. Valid rows are stored in
    <data-dir>/directory/users.parquet; a bad row (its line, the field and the value
    in the reason) goes to <data-dir>/directory/quarantine/. Without --replace, the
    listed users are updated and the others kept; a column the file lacks keeps its
    stored values (an empty cell means unknown). A repeated user_id keeps
    its first row; a row with no value at all (a blank line) is skipped. With --replace,
    a file with no valid row is refused when the directory holds users (a truncated
    export must not delete them). Exit 0: stored; 1: the file could not be read or was
    refused (nothing stored); 2: stored, but more than ingest.max_quarantine_ratio of the
    rows were quarantined.

    \b
    Example:
      printf 'user_id,department,role,is_privileged,criticality\\nu00042,finance,analyst,no,high\\n' > users.csv
      uba-batch users import users.csv --data-dir data
    """
    from uba.directory import COLUMNS, import_directory

    settings = settings_from(ctx, data_dir=data_dir)
    summary = import_directory(settings.paths.data_dir, Path(file), replace=replace,
                               max_id_length=settings.events.max_string_length)
    click.echo(f"read {summary.rows_read} rows: {summary.rows_stored} stored, {summary.rows_quarantined} "
               f"quarantined; the directory holds {summary.users_total} users ({summary.path})")
    if summary.rows_read == summary.rows_blank:
        click.echo(f"warning: {file} has no data rows")
    elif summary.rows_blank:
        click.echo(f"skipped {summary.rows_blank} blank rows")
    if summary.kept_columns:
        click.echo(f"not in the file, kept as stored for the users it lists: {', '.join(summary.kept_columns)}")
    if summary.ignored_columns:
        click.echo(f"ignored columns (not {', '.join(COLUMNS)}): "
                   + ", ".join(repr(name) for name in summary.ignored_columns[:MAX_IGNORED_NAMES])
                   + (" ..." if len(summary.ignored_columns) > MAX_IGNORED_NAMES else ""))
    if summary.quarantine_path is not None:
        click.echo(f"quarantined rows: {summary.quarantine_path} "
                   + ", ".join(f"{k}: {v}" for k, v in sorted(summary.reasons.items())))
    if summary.quarantine_exceeded(settings.ingest.max_quarantine_ratio):
        click.echo(f"error: {summary.quarantined_ratio:.0%} of the rows were quarantined "
                   f"(ingest.max_quarantine_ratio {settings.ingest.max_quarantine_ratio:g})", err=True)
        ctx.exit(QUARANTINE_EXIT_CODE)
