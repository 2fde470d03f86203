"""`monitor`: a range of scored days read back from their run manifests.

Drift itself is measured while a day is scored (``uba.monitoring.drift``); this module only
collects what the manifests recorded, which days have no run, which days' entity risk
went stale, charts the history and says whether retraining is advisable, and writes it
as the lines the command prints (``monitor_lines``).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

from uba import io
from uba.alerting.ledger import SinkState, sink_states
from uba.dates import day_ranges
from uba.errors import UserError
from uba.features.pipeline import date_range
from uba.manifest import StaleEntry, events_changed, lookback_changed, read_manifest
from uba.monitoring.charts import drift_history_png
from uba.monitoring.drift import MonitoringRow, monitoring_row, retrain_advice
from uba.settings import Settings

MISSING_RUNS_SHOWN = 12  # runs of days without a run named under the table; more are counted


@dataclass(frozen=True)
class MonitoringSummary:
    """Per-day rows (``drift.monitoring_row``) plus what an operator must act on."""

    rows: list[MonitoringRow]
    missing: list[date]
    stale: list[tuple[date, StaleEntry]]
    chart: Path
    advice: str | None
    in_sample: list[tuple[date, str]]  # days scored by a model trained on them, and that model
    changed: list[tuple[date, str]]  # days whose events changed after they were scored, and how
    history: list[tuple[date, str]] = field(default_factory=list)  # days whose lookback's events changed since

    @property
    def judged_by_excess(self) -> bool:
        """Whether any day's verdict used excess PSI (over chance) rather than raw PSI."""
        return any(r.get("judged_by") == "excess" for r in self.rows)


@dataclass
class CollectedRuns:
    """What the manifests of a range say, before the chart and the advice."""

    rows: list[MonitoringRow]
    missing: list[date]
    stale: list[tuple[date, StaleEntry]]
    in_sample: list[tuple[date, str]]
    changed: list[tuple[date, str]]
    history: list[tuple[date, str]] = field(default_factory=list)


def collect_rows(output_dir: Path, data_dir: Path, start: date, end: date) -> CollectedRuns:
    """Rows of the days with a run, the days without one, each stale day's first marker,
    the days scored in-sample (inside their model's training window) and the days whose
    events changed after they were scored (late events, never scored)."""

    runs = CollectedRuns([], [], [], [], [])
    seen: dict[str, str | None] = {}  # events fingerprints, each day listed once
    for day in date_range(start, end):
        manifest = read_manifest(output_dir, day)
        if manifest is None:
            runs.missing.append(day)
            continue
        runs.rows.append(monitoring_row(manifest))
        runs.stale += [(day, entry) for entry in manifest.get("risk_stale", [])[:1]]
        model = manifest.get("model", {})  # a sparse or older manifest may lack it
        if model.get("in_training_window"):
            runs.in_sample.append((day, str(model.get("version"))))
        changed = events_changed(manifest, data_dir, day)
        if changed:
            runs.changed.append((day, changed))
        history = lookback_changed(manifest, data_dir, seen)
        if history:
            runs.history.append((day, history))
    return runs


def monitor_days(settings: Settings, start: date, end: date, png: Path | None) -> MonitoringSummary:
    """Read the manifests of ``start..end``, write the drift chart and judge retraining.

    The chart goes to ``png`` or <output-dir>/monitoring/monitor-<start>_<end>.png.
    """

    out_dir = Path(settings.paths.output_dir)
    runs = collect_rows(out_dir, Path(settings.paths.data_dir), start, end)
    rows = runs.rows
    if not rows:
        raise UserError(f"no run manifests between {start} and {end} under {out_dir / io.RUNS}")
    target = png if png is not None else out_dir / "monitoring" / f"monitor-{start}_{end}.png"
    try:
        io.write_bytes_atomic(drift_history_png(rows, settings.monitoring.psi_warn,
                                                settings.monitoring.psi_drift), target)
    except OSError as exc:  # a mistyped --png: one line, no traceback
        raise UserError(f"cannot write the chart to {target}: {exc.strerror or exc}") from exc
    return MonitoringSummary(rows, runs.missing, runs.stale, target, retrain_advice(rows), runs.in_sample,
                             runs.changed, runs.history)


def monitor_lines(settings: Settings, start: date, end: date, png: Path | None) -> Iterator[str]:
    """``monitor``: the table of ``start..end`` (``monitor_days``, which writes the chart),
    the days without a run or with stale entity risk, the retraining advice, and per
    alerting sink what delivery left pending or failed (from the delivery ledger)."""
    summary = monitor_days(settings, start, end, png)
    unit = "xs" if summary.judged_by_excess else "PSI"
    yield (f"{'date':<12}{'scored':>8}{'alerts':>8}{'rate':>8}{'expect':>8}{'feat' + unit:>9}"
           f"{'score' + unit:>10}  {'status':<6} top feature")
    for r in summary.rows:
        yield (f"{r['date']:<12}{r['scored']:>8}{r['alerts']:>8}{_fmt(r['alert_rate'], 4):>8}"
               f"{_fmt(r['expected_alert_rate'], 4):>8}{_fmt(r['feature_judged']):>9}"
               f"{_fmt(r['score_judged']):>10}  {r['status']:<6} {r['max_feature'] or '-'}")
    yield _models_line(summary.rows)
    yield from _summary_notes(summary)
    for state in sink_states(Path(settings.paths.data_dir)) or []:
        yield _sink_line(state)


def _models_line(rows: list[MonitoringRow]) -> str:
    """Which model scored which days, as runs of rows: after a mid-week retrain (or a
    re-score with another version) the table's alert rates change model, and the table
    did not say where."""
    spans: list[tuple[str, str, str]] = []  # (first day, last day, model)
    for row in rows:
        model = row["model_version"] or "-"
        day = str(row["date"])
        if spans and spans[-1][2] == model:
            spans[-1] = (spans[-1][0], day, model)
        else:
            spans.append((day, day, model))
    shown = [f"{first} {model}" if first == last else f"{first}..{last} {model}" for first, last, model in spans]
    return "scored by model: " + ", ".join(shown)


def _summary_notes(summary: MonitoringSummary) -> Iterator[str]:
    """The lines under the table: how PSI was judged, missing and stale days, the chart, the advice."""
    if summary.judged_by_excess:
        yield ("xs = excess PSI over what chance gives for the day's users (monitoring.confidence); "
               "the verdict compares it with psi_warn and psi_drift")
    if summary.missing:
        # runs of days, not every date: a year's range with its weekends unscored named ~100
        # dates, and a mistyped end year some 26,000 of them on one 320 KB line
        yield f"no run for {len(summary.missing):,} day(s): {day_ranges(summary.missing, MISSING_RUNS_SHOWN)}"
    for day, entry in summary.stale:
        yield f"entity risk stale on {day}: {entry.get('reason')} (changed day {entry.get('changed_day')})"
    if summary.stale:
        yield (f"re-score the stale days in date order: uba-batch backfill --start {summary.stale[0][0]} "
               f"--end {summary.stale[-1][0]}")
    for day, why in summary.changed:
        yield f"events of {day} not all scored: {why}; re-score it (uba-batch score --date {day}, or backfill)"
    for day, why in summary.history[:1]:
        more = len(summary.history) - 1
        yield (f"baselines of {day}{f' and {more} later day(s)' if more else ''} out of date: {why}; re-score in "
               f"date order (uba-batch backfill --start {day} --end {summary.history[-1][0]})")
    for day, version in summary.in_sample:
        yield (f"scored in-sample on {day}: model {version} was trained on that day, so its alerts are fewer "
               "than on an unseen day; re-score it with a model trained before it (--model-version)")
    yield f"chart: {summary.chart}"
    yield summary.advice or "no retraining needed: no day drifted beyond the configured limits"


def _sink_line(state: SinkState) -> str:
    oldest = f" (oldest {state.oldest_pending})" if state.oldest_pending else ""
    return (f"delivery {state.sink}: {state.pending} pending{oldest}, {state.failed} failed "
            f"(dead letters: `uba-batch alerts list --failed`), {state.delivered} delivered  "
            f"[{'attention' if state.needs_attention else 'ok'}]")


def _fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"
