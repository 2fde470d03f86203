"""`uba-batch train`: fit the detector on a window of days and save a versioned bundle."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import click

from jobs.options import (
    DATE,
    data_dir_option,
    model_dir_option,
    output_dir_option,
    settings_from,
    yesterday_utc,
)


@click.command(name="train")
@click.option("--end-date", type=DATE, default=None,
              help="Last day (inclusive) of the training window (default: yesterday in UTC).")
@click.option("--window-days", type=click.IntRange(1, 366), default=None,
              help="Days in the window, ending at --end-date (default: train.window_days, 21).")
@click.option("--min-days", type=click.IntRange(1, 366), default=None,
              help="Refuse a window with events on fewer days than this (default: train.min_days, 7); "
                   "a window with some days without events trains with a warning.")
@click.option("--exclude-malicious/--keep-malicious", default=False, show_default=True,
              help="Drop events analysts confirmed malicious (uba-batch feedback) from the training data.")
@data_dir_option
@model_dir_option
@output_dir_option
@click.pass_context
def command(ctx: click.Context, end_date: date | None, window_days: int | None, min_days: int | None,
            exclude_malicious: bool, data_dir: str | None, model_dir: str | None, output_dir: str | None) -> None:
    """Train StandardScaler + IsolationForest and calibrate the alert threshold.

    Features come from the same code the scorer and the API use; the threshold is the
    configured percentile (default 98th) of the training anomaly scores. Baselines leave
    out the user-days whose alerts are published under --output-dir (baseline poisoning
    protection, docs/features.md), as `score` does: pass the directory `score` writes to.
    A window with events on fewer than --min-days days (train.min_days, 7) is refused:
    baselines and threshold would be learned from users' first days; a window with
    some days without events trains with a warning naming them.

    \b
    Example:
      uba-batch train --data-dir data --end-date 2026-03-21 --window-days 21 --model-dir models
    """
    from uba.training import train_model

    settings = settings_from(ctx, data_dir=data_dir, model_dir=model_dir, output_dir=output_dir)
    result = train_model(settings, end_date or yesterday_utc(), window_days, exclude_malicious=exclude_malicious,
                         min_days=min_days)
    if result.gap_warning:
        click.echo(f"warning: {result.gap_warning}", err=True)
    window_length = (result.window_end - result.window_start).days + 1
    click.echo(f"model {result.version} trained on {result.rows} events from {result.days_with_data} of the "
               f"{window_length} days {result.window_start}..{result.window_end}; threshold {result.threshold:.6f} "
               f"= p{result.percentile:g} of training scores")
    if exclude_malicious:
        click.echo(f"excluded {result.excluded_malicious} confirmed-malicious events from training")
    click.echo(f"bundle: {Path(result.bundle_path)}")
    click.echo(f"baseline snapshot: {result.snapshot_path}")
