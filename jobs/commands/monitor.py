"""`uba-batch monitor --start A --end B`: drift and alert rate over time, from run manifests."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import click

from jobs.options import DATE, data_dir_option, output_dir_option, settings_from


def _fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


@click.command(name="monitor")
@click.option("--start", type=DATE, required=True, help="First day.")
@click.option("--end", type=DATE, required=True, help="Last day (inclusive).")
@click.option("--png", "png", type=click.Path(dir_okay=False), default=None,
              help="Chart to write (default: <output-dir>/monitoring/monitor-<start>_<end>.png).")
@data_dir_option
@output_dir_option
@click.pass_context
def command(ctx: click.Context, start: date, end: date, png: str | None, data_dir: str | None,
            output_dir: str | None) -> None:
    """Print per-day drift (PSI vs the training reference) and alert rate, chart them,
    and say whether retraining is advisable.

    Reads runs/event_date=*/manifest.json written by `score`; days without a run are
    listed as missing, and days whose entity risk is stale (an earlier day was re-scored,
    or a benign verdict arrived, after they were scored) are named with the reason.
    Limits come from the monitoring settings (psi_warn, psi_drift, alert_rate_tolerance).
    With alert delivery configured, also lists per sink the alerts still pending and the
    dead letters, from the delivery ledger.

    \b
    Example:
      uba-batch backfill --start 2026-03-22 --end 2026-03-28
      uba-batch monitor --start 2026-03-22 --end 2026-03-28 --output-dir output
    """
    from uba import io
    from uba.drift import monitoring_row, retrain_advice
    from uba.errors import UserError
    from uba.pipeline import date_range
    from uba.report import drift_history_png
    from uba.risk import stale_marker

    settings = settings_from(ctx, data_dir=data_dir, output_dir=output_dir)
    out_dir = Path(settings.paths.output_dir)
    rows, missing, stale = [], [], []
    for day in date_range(start, end):
        manifest = io.read_run_manifest(out_dir, day)
        if manifest is None:
            missing.append(day.isoformat())
        else:
            rows.append(monitoring_row(manifest))
            stale += [(day, entry) for entry in stale_marker(manifest)[:1]]
    if not rows:
        raise UserError(f"no run manifests between {start} and {end} under {out_dir / io.RUNS}")
    excess = any(r.get("judged_by") == "excess" for r in rows)
    unit = "xs" if excess else "PSI"
    click.echo(f"{'date':<12}{'scored':>8}{'alerts':>8}{'rate':>8}{'expect':>8}{'feat' + unit:>9}"
               f"{'score' + unit:>10}  {'status':<6} top feature")
    for r in rows:
        click.echo(f"{r['date']:<12}{r['scored']:>8}{r['alerts']:>8}{_fmt(r['alert_rate'], 4):>8}"
                   f"{_fmt(r['expected_alert_rate'], 4):>8}{_fmt(r['feature_judged']):>9}"
                   f"{_fmt(r['score_judged']):>10}  {r['status']:<6} {r['max_feature'] or '-'}")
    if excess:
        click.echo("xs = excess PSI over what chance gives for the day's users (monitoring.confidence); "
                   "the verdict compares it with psi_warn and psi_drift")
    if missing:
        click.echo(f"no run for: {', '.join(missing)}")
    for day, entry in stale:
        click.echo(f"entity risk stale on {day}: {entry.get('reason')} (changed day {entry.get('changed_day')})")
    if stale:
        click.echo(f"re-score the stale days in date order: uba-batch backfill --start {stale[0][0]} "
                   f"--end {stale[-1][0]}")
    target = Path(png) if png else out_dir / "monitoring" / f"monitor-{start}_{end}.png"
    try:
        io.write_bytes_atomic(drift_history_png(rows, settings.monitoring.psi_warn,
                                                settings.monitoring.psi_drift), target)
    except OSError as exc:  # a mistyped --png: one line, no traceback
        raise UserError(f"cannot write the chart to {target}: {exc.strerror or exc}") from exc
    click.echo(f"chart: {target}")
    advice = retrain_advice(rows)
    click.echo(advice or "no retraining needed: no day drifted beyond the configured limits")
    for line in _delivery_lines(Path(settings.paths.data_dir)):
        click.echo(line)


def _delivery_lines(data_dir: Path) -> list[str]:
    """Pending and failed deliveries per sink, when the ledger exists."""
    from uba.alerts.ledger import Ledger, ledger_exists

    if not ledger_exists(data_dir):
        return []
    with Ledger.open(data_dir) as ledger:
        counts = ledger.counts()
        lines = []
        for sink, c in sorted(counts.items()):
            oldest = ledger.oldest_pending_day(sink)
            state = "ok" if not (c["pending"] or c["failed"]) else "attention"
            lines.append(f"delivery {sink}: {c['pending']} pending" + (f" (oldest {oldest})" if oldest else "")
                         + f", {c['failed']} failed (dead letters: `uba-batch alerts list --failed`), "
                           f"{c['delivered']} delivered  [{state}]")
    return lines
