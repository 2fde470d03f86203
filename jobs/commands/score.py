"""``uba-batch score --date D``: the nightly job; scores one day and publishes it atomically."""

from __future__ import annotations

from datetime import date

import click

from jobs.options import (
    DATE,
    data_dir_option,
    model_dir_option,
    output_dir_option,
    ray_options,
    settings_from,
    yesterday_utc,
)


@click.command("score")
@click.option("--date", "day", type=DATE, default=None,
              help="Event date to score, YYYY-MM-DD (default: yesterday in UTC).")
@data_dir_option
@model_dir_option
@output_dir_option
@ray_options
@click.pass_context
def command(ctx: click.Context, day: date | None, data_dir: str | None, model_dir: str | None,
            output_dir: str | None, ray_address: str | None, workers: int | None, shards: int | None,
            in_process: bool, model_version: str | None) -> None:
    """Score every event of one day and publish scores/, flagged/ and the run manifest.

    Outputs are written to a staging directory and swapped into event_date=D only when
    complete; a failed or killed run leaves the previous output of D untouched. Runs of
    the same date are refused while one holds the lock. Details: docs/batch-scoring.md.

    With alerting sinks configured, the day's alerts are then recorded in the delivery
    outbox and sent (for at most alerting.deliver_budget_sec); alerts a receiver did not
    take stay pending and the command still exits 0 (docs/alerting.md#delivery).

    \b
    Example:
      uba-batch score --date 2026-03-22 --data-dir data --model-dir models --output-dir output
      uba-batch score --date 2026-03-22 --ray-address auto --workers 16
    """
    from uba.scoring.context import FaultInjection
    from uba.scoring.driver import ScoreOptions
    from uba.scoring.nightly import score_and_deliver

    settings = settings_from(ctx, data_dir=data_dir, model_dir=model_dir, output_dir=output_dir)
    options = ScoreOptions(day=day or yesterday_utc(), ray_address=ray_address, workers=workers,
                           shards=shards, in_process=in_process, model_version=model_version,
                           fault=FaultInjection.from_env())
    code = 0
    for line in score_and_deliver(settings, options):
        click.echo(line.text, err=line.err)
        code = code or line.exit_code
    if code:
        ctx.exit(code)
