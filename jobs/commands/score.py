"""``uba-batch score --date D``: the nightly job; scores one day and publishes it atomically."""

from __future__ import annotations

from collections.abc import Callable
from datetime import date
from typing import Any, TypeVar

import click

from jobs.options import (
    DATE,
    data_dir_option,
    model_dir_option,
    output_dir_option,
    settings_from,
    yesterday_utc,
)

F = TypeVar("F", bound=Callable[..., Any])


def ray_options(func: F) -> F:
    """Options shared with ``backfill``: where the model runs and how the work is split."""
    decorators = [
        click.option("--ray-address", default=None, envvar="RAY_ADDRESS", metavar="ADDR",
                     help="Join an existing Ray cluster ('auto' = the cluster this process runs in, "
                          "or host:port). Default: start an embedded local Ray. Env: RAY_ADDRESS."),
        click.option("--workers", type=click.IntRange(1, 1024), default=None,
                     help="Concurrent scoring tasks (default: ray.num_workers; all CPUs of a joined cluster)."),
        click.option("--shards", type=click.IntRange(1, 100_000), default=None, hidden=True,
                     help="Ignored (kept so old scripts still run): shards are planned from the "
                          "data, scoring.chunk_rows events each, so outputs never depend on it."),
        click.option("--in-process", is_flag=True, default=False,
                     help="Score in this process without Ray (same results, for small days and debugging)."),
        click.option("--model-version", default=None, metavar="VERSION",
                     help="Model bundle version to use (default: the LATEST one in --model-dir)."),
    ]
    for decorator in reversed(decorators):
        func = decorator(func)
    return func


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
    from uba.alerts.delivery import (
        catch_up,
        check_sinks,
        deliver_published,
        enqueue_day,
        register_sinks,
    )
    from uba.scoring import FaultInjection, ScoreOptions, score_day
    from uba.scoring.backfill import describe_manifest

    settings = settings_from(ctx, data_dir=data_dir, model_dir=model_dir, output_dir=output_dir)
    sinks = check_sinks(settings)  # a misconfigured sink fails here, before any scoring
    register_sinks(settings, sinks)
    options = ScoreOptions(day=day or yesterday_utc(), ray_address=ray_address, workers=workers,
                           shards=shards, in_process=in_process, model_version=model_version,
                           fault=FaultInjection.from_env())
    manifest = score_day(settings, options)
    click.echo(f"scored {options.day}: {describe_manifest(manifest)}, model {manifest['model']['version']} "
               f"-> {manifest['outputs']['scores']['path']}")
    if sinks:  # the outbox first (durable), then delivery; pending alerts do not fail the run
        added = enqueue_day(settings, sinks, options.day)
        catch_up(settings, sinks)  # days whose own enqueue was interrupted (a kill right after publishing)
        for line in deliver_published(settings, sinks, {(options.day, manifest["run_id"]): added}):
            click.echo(line)
    # drift verdict; heavy drift fails the command only if configured
    from uba.operations import drift_verdict

    line, code = drift_verdict(manifest, settings)
    click.echo(line, err=code != 0)
    if code:
        ctx.exit(code)
