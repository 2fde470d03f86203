"""``uba-batch backfill --start A --end B``: score a range of dates, skipping finished ones."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from datetime import date
from typing import TYPE_CHECKING

import click

from jobs.options import (
    DATE,
    data_dir_option,
    model_dir_option,
    output_dir_option,
    ray_options,
    settings_from,
)
from uba.logs import get_logger

if TYPE_CHECKING:
    from uba.scoring.backfill import BackfillOutcome

log = get_logger("backfill")


def _report_line(outcome: BackfillOutcome) -> str:
    return f"{outcome.day} {outcome.status}: {outcome.detail}"


@click.command("backfill")
@click.option("--start", type=DATE, required=True, help="First event date, YYYY-MM-DD.")
@click.option("--end", type=DATE, required=True, help="Last event date (inclusive), YYYY-MM-DD.")
@click.option("--force", is_flag=True, default=False,
              help="Re-score dates already scored with the current model version.")
@data_dir_option
@model_dir_option
@output_dir_option
@ray_options
@click.pass_context
def command(ctx: click.Context, start: date, end: date, force: bool, data_dir: str | None,
            model_dir: str | None, output_dir: str | None, ray_address: str | None,
            workers: int | None, shards: int | None, in_process: bool, model_version: str | None) -> None:
    """Score each date from --start to --end in order, like `score --date` for each.

    Dates whose published manifest already names the current model version are skipped
    unless --force. A failing date is reported and the others still run; the exit code
    is 1 if any date failed. Shows a progress bar at a terminal, log lines otherwise.
    With alerting sinks configured, each scored date's alerts are enqueued as it is
    published and delivered at the end (docs/alerting.md#delivery).

    \b
    Example:
      uba-batch backfill --start 2026-03-01 --end 2026-03-28 --data-dir data --model-dir models --output-dir output
      uba-batch backfill --start 2026-03-01 --end 2026-03-07 --force --in-process
    """
    from uba.scoring.context import FaultInjection
    from uba.scoring.driver import ScoreOptions
    from uba.scoring.nightly import backfill_and_deliver

    settings = settings_from(ctx, data_dir=data_dir, model_dir=model_dir, output_dir=output_dir)
    options = ScoreOptions(day=start, ray_address=ray_address, workers=workers, shards=shards,
                           in_process=in_process, model_version=model_version,
                           fault=FaultInjection.from_env())
    code = 0
    for line in backfill_and_deliver(settings, start, end, options, force, show=_run):
        click.echo(line.text, err=line.err)
        code = code or line.exit_code
    if code:
        sys.exit(code)


def _run(walk: Iterator[BackfillOutcome], total: int) -> list[BackfillOutcome]:
    """Drive the walk with a progress bar for a person, plain log lines for a log file."""
    outcomes: list[BackfillOutcome] = []
    if sys.stderr.isatty():
        with click.progressbar(length=total, label="backfill", file=sys.stderr,
                               item_show_func=_progress_item) as bar:
            for outcome in walk:
                outcomes.append(outcome)
                bar.update(1, outcome)
        for outcome in outcomes:
            if outcome.status == "failed":
                click.echo(_report_line(outcome), err=True)
        return outcomes
    for index, outcome in enumerate(walk, start=1):
        outcomes.append(outcome)
        level = log.error if outcome.status == "failed" else log.info
        level("[%d/%d] %s", index, total, _report_line(outcome))
    return outcomes


def _progress_item(outcome: BackfillOutcome | None) -> str | None:
    return f"{outcome.day} {outcome.status}" if outcome else None
