"""`uba-batch evaluate`: out-of-sample quality report against generated labels."""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING

import click

from jobs.options import DATE, data_dir_option, model_dir_option, output_dir_option, settings_from

if TYPE_CHECKING:  # the command imports the library only when it runs (start-up time)
    from uba.monitoring.evaluation import EvaluationReport
    from uba.monitoring.user_evaluation import UserLevelReport, UserLevelSkipped


@click.command(name="evaluate")
@click.option("--start", type=DATE, default=None, help="First evaluation day (default: day after training).")
@click.option("--end", type=DATE, default=None, help="Last evaluation day (default: last day with events).")
@click.option("--model-version", default=None, help="Bundle version to evaluate (default: latest).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="Report directory (default: <output-dir>/evaluation).")
@data_dir_option
@model_dir_option
@output_dir_option
@click.pass_context
def command(ctx: click.Context, start: date | None, end: date | None, model_version: str | None,
            out_dir: str | None, data_dir: str | None, model_dir: str | None, output_dir: str | None) -> None:
    """Score days the model never saw and compare with a naive global model.

    Reports ROC-AUC, PR-AUC, precision/recall at the saved threshold, alert rate,
    recall per anomaly kind and alert concentration across users, as JSON and a PNG.
    With campaigns in the labels (generate --campaigns) and the days scored (their
    risk/ tables published), also user-level precision@k and recall@k of users ranked
    by entity risk vs by their maximum event score, days to high risk, and a user-level
    precision-recall figure (evaluation_users.png).

    \b
    Example:
      uba-batch train --data-dir data --end-date 2026-03-21 --window-days 21 --model-dir models
      uba-batch evaluate --data-dir data --model-dir models --start 2026-03-22 --end 2026-03-28
    """
    from uba.monitoring.evaluation import run_evaluation

    settings = settings_from(ctx, data_dir=data_dir, model_dir=model_dir, output_dir=output_dir)
    run = run_evaluation(settings, start, end, model_version, Path(out_dir) if out_dir else None)
    _print_summary(run.report)
    click.echo(f"report: {run.json_path}, figure: {run.png_path}")


def _print_summary(report: EvaluationReport) -> None:
    for name, m in report["models"].items():
        click.echo(f"{name}: ROC-AUC {m['roc_auc']:.3f}  PR-AUC {m['pr_auc']:.3f}  "
                   f"precision {m['precision_at_threshold']:.3f}  recall {m['recall_at_threshold']:.3f}  "
                   f"alert rate {m['alert_rate']:.4f}")
        for kind, k in m["recall_by_kind"].items():
            click.echo(f"    recall {kind:<16} {k['recall']:.3f}  ({k['events']} events)")
    click.echo(f"PR-AUC ratio vs naive: {report['pr_auc_ratio_vs_naive']:.2f}")
    conc = report["alert_concentration"]
    click.echo(f"alerts from top 1% of users: {conc['top_1pct_share_of_alerts']:.3f}")
    per_user = report.get("per_user_thresholds")
    if per_user:
        m, both = per_user["metrics"], per_user["alert_concentration"]
        click.echo(f"with per-user thresholds: alert rate {m['alert_rate']:.4f}  recall {m['recall_at_threshold']:.3f}  "
                   f"precision {m['precision_at_threshold']:.3f}  alerts from top 1% of users "
                   f"{both['per_user_thresholds']['top_1pct_share_of_alerts']:.3f} "
                   f"(global threshold: {both['global_threshold']['top_1pct_share_of_alerts']:.3f})")
    _print_user_level(report["user_level"])


def _print_user_level(user_level: UserLevelReport | UserLevelSkipped) -> None:
    if "skipped" in user_level:
        click.echo(f"user level: skipped, {user_level['skipped']}")
        return
    for name, r in user_level["rankings"].items():
        p, t = r["precision_at_k"], r["time_to_high"]
        median = "not reached" if t["median_days"] is None else f"{t['median_days']:g} days"
        mean = p["mean_precision_at_k"]
        click.echo(f"users by {name:<16} precision@k = recall@k {'-' if mean is None else f'{mean:.3f}'} "
                   f"over {p['days_with_campaigns']} days; to high: median {median} "
                   f"({t['reached']}/{t['total']} campaigns reached); AP {r['pr_curve']['average_precision'] or 0:.3f}")
    gain = user_level["precision_at_k_gain"]
    if gain is not None:
        click.echo(f"precision@k gain of risk over max event score: {gain:+.3f}")
