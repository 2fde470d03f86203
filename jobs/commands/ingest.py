"""`uba-batch ingest`: validate raw event files into events/ and quarantine/ partitions."""

from __future__ import annotations

import json

import click

from jobs.options import data_dir_option, settings_from

# 0: stored (warnings aside); 1: refused, one line, the failed summary written; 2: stored
# what it could, but more than ingest.max_quarantine_ratio of the rows went to quarantine.
QUARANTINE_EXIT_CODE = 2


@click.command(name="ingest")
@click.argument("inputs", nargs=-1, required=True, metavar="INPUT...")
@data_dir_option
@click.option("--format", "fmt", type=click.Choice(["auto", "csv", "json", "jsonl", "parquet"]), default=None,
              help="Input format; auto picks it from the extension (.csv, .json, .jsonl/.ndjson, .parquet, "
                   "plus .gz for text formats). Default: ingest.format (auto).")
@click.option("--batch-rows", type=int, default=None,
              help="Rows per streamed batch; bounds memory (default: ingest.batch_rows, 250000; minimum 1000).")
@click.option("--json", "as_json", is_flag=True, default=False, help="Print the run summary as JSON.")
@click.pass_context
def command(ctx: click.Context, inputs: tuple[str, ...], data_dir: str | None, fmt: str | None,
            batch_rows: int | None, as_json: bool) -> None:
    """Validate raw events (CSV, JSON array, JSON Lines, Parquet; files or quoted globs).

    Valid rows go to <data-dir>/events/event_date=YYYY-MM-DD/, rejected rows (original
    values as text + reason + source file and row) to <data-dir>/quarantine/. Files are
    read in bounded batches; re-ingesting a file adds nothing (its rows are quarantined
    as duplicate event_id). The summary is printed and kept in <data-dir>/ingest_runs/.
    See docs/ingest.md for the list of reasons. Exit code 0: stored; 1: refused (one
    line, nothing of that file stored); 2: stored, but more than ingest.max_quarantine_ratio
    of the rows were quarantined.

    \b
    Example:
      uba-batch ingest exports/events-2026-03-*.csv --data-dir data
      uba-batch ingest 'exports/**/*.jsonl.gz' --data-dir data --json
      uba-batch ingest dump.txt --format jsonl --batch-rows 100000
    """
    from uba.ingest.files import ingest_files, quarantine_share_exceeded

    if batch_rows is not None:
        root = ctx.find_root()
        root.obj = root.obj or {}
        root.obj.setdefault("overrides", {}).setdefault("ingest", {})["batch_rows"] = batch_rows
    settings = settings_from(ctx, data_dir=data_dir)
    summary = ingest_files(inputs, settings.paths.data_dir, settings, fmt=fmt)
    if as_json:
        click.echo(json.dumps(summary.to_dict(), indent=2, sort_keys=True))
    else:
        click.echo(summary.to_table())
    too_many = quarantine_share_exceeded(summary, settings.ingest.max_quarantine_ratio)
    if too_many:
        click.echo(f"error: {too_many}", err=True)
        ctx.exit(QUARANTINE_EXIT_CODE)
