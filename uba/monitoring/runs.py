"""`monitor`: a range of scored days read back from their run manifests.

Drift itself is measured while a day is scored (``uba.monitoring.drift``); this module only
collects what the manifests recorded, which days have no run, which days' entity risk
went stale, charts the history and says whether retraining is advisable.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from pathlib import Path

from uba import io
from uba.errors import UserError
from uba.features.pipeline import date_range
from uba.manifest import StaleEntry, read_manifest
from uba.monitoring.charts import drift_history_png
from uba.monitoring.drift import MonitoringRow, monitoring_row, retrain_advice
from uba.settings import Settings


@dataclass(frozen=True)
class MonitoringSummary:
    """Per-day rows (``drift.monitoring_row``) plus what an operator must act on."""

    rows: list[MonitoringRow]
    missing: list[date]
    stale: list[tuple[date, StaleEntry]]
    chart: Path
    advice: str | None

    @property
    def judged_by_excess(self) -> bool:
        """Whether any day's verdict used excess PSI (over chance) rather than raw PSI."""
        return any(r.get("judged_by") == "excess" for r in self.rows)


def collect_rows(output_dir: Path, start: date, end: date) -> tuple[list[MonitoringRow], list[date],
                                                                      list[tuple[date, StaleEntry]]]:
    """Rows of the days with a run, the days without one, and each stale day's first marker."""

    rows: list[MonitoringRow] = []
    missing: list[date] = []
    stale: list[tuple[date, StaleEntry]] = []
    for day in date_range(start, end):
        manifest = read_manifest(output_dir, day)
        if manifest is None:
            missing.append(day)
        else:
            rows.append(monitoring_row(manifest))
            stale += [(day, entry) for entry in manifest.get("risk_stale", [])[:1]]
    return rows, missing, stale


def monitor_days(settings: Settings, start: date, end: date, png: Path | None) -> MonitoringSummary:
    """Read the manifests of ``start..end``, write the drift chart and judge retraining.

    The chart goes to ``png`` or <output-dir>/monitoring/monitor-<start>_<end>.png.
    """

    out_dir = Path(settings.paths.output_dir)
    rows, missing, stale = collect_rows(out_dir, start, end)
    if not rows:
        raise UserError(f"no run manifests between {start} and {end} under {out_dir / io.RUNS}")
    target = png if png is not None else out_dir / "monitoring" / f"monitor-{start}_{end}.png"
    try:
        io.write_bytes_atomic(drift_history_png(rows, settings.monitoring.psi_warn,
                                                settings.monitoring.psi_drift), target)
    except OSError as exc:  # a mistyped --png: one line, no traceback
        raise UserError(f"cannot write the chart to {target}: {exc.strerror or exc}") from exc
    return MonitoringSummary(rows, missing, stale, target, retrain_advice(rows))
