"""The daily analyst report: one self-contained HTML page per scored day.

Everything the page shows is embedded (inline CSS, charts as base64 PNGs, no scripts,
no external links), so it can be mailed, attached to a ticket or opened on an
air-gapped workstation and look the same.

The "top users" table reads the day's entity risk table (``uba.alerting.risk``, the one table
the API and the export read too): the riskiest users, and every user at high or above
however many there are, each with a 30-day sparkline (inline SVG) and the day's alerts
and reasons beside it. A day scored before entity risk existed falls back to the old
one-day sum: each unsuppressed event alert contributes ``anomaly_score / threshold``
(at least 1) and a user-day alert its ``day_score``.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl

from uba import io
from uba.alerting.records import day_records
from uba.alerting.risk import (
    read_risk,
    rescore_remedy,
    risk_window,
    risk_window_days,
    stale_marker,
    user_series,
)
from uba.alerting.triage import status_counts
from uba.alerting.userday import riskiest_first
from uba.errors import UserError
from uba.manifest import DriftSection, RunManifest, StaleEntry, events_changed, read_manifest
from uba.monitoring.charts import STATUS_COLOURS, drift_history_png, file_backend, png_bytes
from uba.monitoring.drift import MonitoringRow, monitoring_row, retrain_advice
from uba.schema import unsuppressed_alert
from uba.settings import Settings

FLAGGED_NEEDED: dict[str, pl.DataType] = {
    "event_id": pl.String(),
    "user_id": pl.String(),
    "anomaly_score": pl.Float64(),
    "threshold": pl.Float64(),
    "reasons": pl.List(pl.String()),
}
USER_DAY_NEEDED: dict[str, pl.DataType] = {
    "user_id": pl.String(),
    "day_score": pl.Float64(),
    "reasons": pl.List(pl.String()),
}


# --- tables ----------------------------------------------------------------------------


def _with_defaults(frame: pl.LazyFrame) -> pl.LazyFrame:
    """Columns added by later features (suppression, per-user cuts) may be absent in old outputs."""
    names = frame.collect_schema().names()
    extra = []
    if "suppressed" not in names:
        extra.append(pl.lit(False).alias("suppressed"))
    if "user_threshold" not in names:
        extra.append(pl.col("threshold").alias("user_threshold"))
    return frame.with_columns(extra) if extra else frame


def with_day_score(users: pl.LazyFrame) -> pl.LazyFrame:
    """User-day alerts with ``day_score`` (runs before entity risk called it ``risk_score``)."""
    names = users.collect_schema().names()
    if "day_score" not in names and "risk_score" in names:
        return users.rename({"risk_score": "day_score"})
    return users


def risk_top_users(risk: pl.DataFrame, flagged: pl.LazyFrame, flagged_users: pl.LazyFrame, top: int,
                   high_levels: tuple[str, ...] = ("high", "critical")) -> pl.DataFrame:
    """The report's top users from the risk table: the ``top`` riskiest and every user at
    high or above (never cut off), with the day's alert details joined."""
    ranked = risk.sort(["risk_score", "user_id"], descending=[True, False]).with_row_index("_rank")
    chosen = ranked.filter((pl.col("_rank") < top) | pl.col("risk_level").is_in(high_levels))
    details = user_risk_table(flagged, flagged_users, top=None).drop("risk").collect()
    return (chosen.join(details, on="user_id", how="left")
            .with_columns(pl.col("alerts", "suppressed").fill_null(0),
                          pl.col("reasons").fill_null(pl.lit([], pl.List(pl.String))))
            .sort("_rank")
            .select("user_id", pl.col("risk_score").alias("risk"), "risk_level", "risk_delta", "first_seen_high",
                    "alerts", "suppressed", "max_score", "user_day_risk", "reasons"))


def user_risk_table(flagged: pl.LazyFrame, flagged_users: pl.LazyFrame, top: int | None) -> pl.LazyFrame:
    """Users ranked by the day's one-day sum (see the module doc), with their strongest
    reasons: the ranking of days scored before entity risk, and the day's details."""
    flagged_users = with_day_score(flagged_users)
    events = _with_defaults(flagged)
    alerting = events.filter(unsuppressed_alert(events.collect_schema().names()))
    per_user = alerting.group_by("user_id").agg(
        pl.len().cast(pl.Int64).alias("alerts"),
        pl.col("anomaly_score").max().alias("max_score"),
        (pl.col("anomaly_score") / pl.col("user_threshold")).clip(1.0, None).sum().alias("event_risk"),
        pl.col("reasons").sort_by("anomaly_score", descending=True).head(2).explode()
        .drop_nulls().unique(maintain_order=True).head(3).alias("event_reasons"),
    )
    suppressed = events.filter(pl.col("suppressed")).group_by("user_id").agg(
        pl.len().cast(pl.Int64).alias("suppressed")
    )
    days = flagged_users.select(
        "user_id", pl.col("day_score").alias("user_day_risk"), pl.col("reasons").alias("user_day_reasons")
    )
    users = pl.concat([per_user.select("user_id"), suppressed.select("user_id"), days.select("user_id")]
                      ).unique()
    return (
        users.join(per_user, on="user_id", how="left")
        .join(suppressed, on="user_id", how="left")
        .join(days, on="user_id", how="left")
        .with_columns(
            pl.col("alerts", "suppressed").fill_null(0),
            (pl.col("event_risk").fill_null(0.0) + pl.col("user_day_risk").fill_null(0.0)).round(3)
            .alias("risk"),
            pl.concat_list(pl.col("user_day_reasons").fill_null(pl.lit([], pl.List(pl.String))),
                           pl.col("event_reasons").fill_null(pl.lit([], pl.List(pl.String))))
            .alias("reasons"),
        )
        .filter(pl.col("risk") > 0)
        .sort(["risk", "user_id"], descending=[True, False])
        .head(top if top is not None else 2**31)
        .select("user_id", "risk", "alerts", "suppressed", "max_score", "user_day_risk", "reasons")
    )


def suppression_counts(flagged: pl.LazyFrame) -> pl.LazyFrame:
    """How many alerts each rule silenced on the day."""
    events = _with_defaults(flagged)
    names = events.collect_schema().names()
    rule = pl.col("suppressed_by") if "suppressed_by" in names else pl.lit("?")
    return (events.filter(pl.col("suppressed")).group_by(rule.alias("rule_id"))
            .agg(pl.len().cast(pl.Int64).alias("suppressed")).sort(["suppressed", "rule_id"],
                                                                   descending=[True, False]))


def user_day_alerts(users: pl.LazyFrame) -> pl.LazyFrame:
    """Every user-day alert of the day, riskiest first, with the day's counts next to the
    user's usual ones where the run recorded them."""
    users = with_day_score(users)
    names = users.collect_schema().names()
    counts = [c for c in ("n_events", "usual_events", "n_sessions", "usual_sessions", "n_downloads",
                          "usual_downloads") if c in names]
    return riskiest_first(users.select("user_id", "day_score", "reasons", *counts))


# --- data ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReportData:
    """Everything one day's page shows, already read from storage."""

    day: date
    manifest: RunManifest
    history: list[MonitoringRow]
    top_users: pl.DataFrame
    suppressions: pl.DataFrame
    flagged_users: int
    generated_at: datetime
    user_days: pl.DataFrame = field(default_factory=pl.DataFrame)  # every user-day alert, riskiest first
    sparklines: dict[str, list[float]] = field(default_factory=dict)  # user -> risk over the last days
    entity_risk: bool = False  # the top users come from the risk table (else the one-day sum)
    stale: list[StaleEntry] = field(default_factory=list)  # the day's risk_stale entries
    triage: dict[str, dict[str, int]] = field(default_factory=dict)  # alert type -> status -> count
    late_events: str | None = None  # why the day's published output misses stored events (manifest.events_changed)


def _scan_or_empty(root: Path, dataset: str, day: date, schema: Mapping[str, pl.DataType]) -> pl.LazyFrame:
    table = io.read_partition(root, dataset, day, rescore_remedy(day))
    return table.lazy() if table is not None else pl.LazyFrame(schema=dict(schema))


def load_report_data(settings: Settings, day: date, history_days: int = 14, top: int = 15) -> ReportData:
    """Read the day's manifest, outputs and the previous days' manifests."""
    output_dir = Path(settings.paths.output_dir)
    manifest = read_manifest(output_dir, day)
    if manifest is None:
        raise UserError(f"{day.isoformat()} has not been scored (no manifest under {output_dir / io.RUNS}); "
                        f"run `uba-batch score --date {day.isoformat()}` first")
    first = day - timedelta(days=min(history_days - 1, (day - date.min).days))  # clipped at 0001-01-01
    history: list[MonitoringRow] = []
    for past in io.run_manifest_dates(output_dir):
        if first <= past <= day:
            past_manifest = manifest if past == day else read_manifest(output_dir, past)
            if past_manifest is not None:
                history.append(monitoring_row(past_manifest))
    flagged = _scan_or_empty(output_dir, io.FLAGGED, day, FLAGGED_NEEDED)
    users = with_day_score(_scan_or_empty(output_dir, io.FLAGGED_USERS, day, USER_DAY_NEEDED))
    risk = read_risk(output_dir, day)
    top_users = (user_risk_table(flagged, users, top).collect() if risk is None
                 else risk_top_users(risk, flagged, users, top))
    return ReportData(
        day=day,
        manifest=manifest,
        history=history,
        top_users=top_users,
        suppressions=suppression_counts(flagged).collect(),
        flagged_users=int(users.select(pl.len()).collect().item()),
        generated_at=datetime.now(UTC),
        user_days=user_day_alerts(users).collect(),
        sparklines=_sparklines(output_dir, day, top_users["user_id"].to_list(), settings.risk.history_days)
        if risk is not None else {},
        entity_risk=risk is not None,
        stale=stale_marker(manifest),
        triage=triage_counts(settings, day),
        late_events=events_changed(manifest, Path(settings.paths.data_dir), day),
    )


def triage_counts(settings: Settings, day: date) -> dict[str, dict[str, int]]:
    """The day's findings (as exported) by alert type and triage status."""
    records = day_records(Path(settings.paths.output_dir), day, "all", settings.alerting.risk_min_level)
    return status_counts(Path(settings.paths.data_dir), records)


def _sparklines(output_dir: Path, day: date, users: list[str], days: int) -> dict[str, list[float]]:
    """Each user's risk on every scored day of the window (0 where absent), read once."""
    window, listed = risk_window(output_dir, day, days), risk_window_days(output_dir, day, days)
    return {u: user_series(window, u, listed)["risk_score"].to_list() for u in users}


# --- charts ----------------------------------------------------------------------------


def alert_history_png(rows: Sequence[MonitoringRow], day: date) -> bytes:
    """Alerts per day (suppressed stacked on top) against the alerts the percentile promises."""
    file_backend()
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 2.8))
    labels = [str(r["date"])[5:] for r in rows]
    alerts = [r["alerts"] for r in rows]
    suppressed = [r["suppressed"] for r in rows]
    colours = ["#1565c0" if str(r["date"]) == day.isoformat() else "#90caf9" for r in rows]
    ax.bar(labels, alerts, color=colours, label="alerts")
    ax.bar(labels, suppressed, bottom=alerts, color="#cfd8dc", label="suppressed")
    expected = [(r["expected_alert_rate"] or 0.0) * r["scored"] for r in rows]
    ax.plot(labels, expected, color="#37474f", linestyle="--", marker=".", label="expected")
    ax.set_ylabel("events")
    ax.tick_params(axis="x", labelsize=7, rotation=45)
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    return png_bytes(fig)


# --- page ------------------------------------------------------------------------------

CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#212121;background:#f5f6f8}
header{background:#263238;color:#fff;padding:16px 28px}
header h1{margin:0;font-size:22px}
header p{margin:4px 0 0;color:#cfd8dc;font-size:13px}
main{padding:18px 28px}
.row{display:grid;grid-template-columns:repeat(auto-fit,minmax(560px,1fr));gap:16px}
.row>section{margin:0 0 16px;min-width:0}
.row>section.wide{grid-column:1/-1}
section{background:#fff;border:1px solid #e0e0e0;border-radius:6px;padding:14px 18px;margin:0 0 16px;overflow-x:auto}
h2{font-size:16px;margin:0 0 10px}
.cards{display:flex;gap:12px;flex-wrap:wrap;background:none;border:0;padding:0}
.card{background:#fff;border:1px solid #e0e0e0;border-radius:6px;padding:10px 16px;min-width:130px}
.card b{display:block;font-size:22px}
.card .label{color:#616161;font-size:12px}
.chip{display:inline-block;padding:1px 10px;border-radius:10px;color:#fff;font-weight:600}
table{border-collapse:collapse;width:100%;font-size:13px}
th,td{text-align:left;padding:5px 8px;border-bottom:1px solid #eee;vertical-align:top}
th{background:#fafafa;font-weight:600}
td.num{text-align:right;font-variant-numeric:tabular-nums}
ul.reasons{margin:0;padding-left:18px}
td.uid{font-family:ui-monospace,"DejaVu Sans Mono",Menlo,Consolas,monospace}
td.uid div{max-width:32ch;min-width:8ch;overflow-wrap:anywhere;white-space:pre-wrap}
td.uid .spelled{color:#8d6e00;font-size:11px}
img{max-width:100%;height:auto}
.muted{color:#757575}
footer{padding:0 28px 24px;color:#757575;font-size:12px}
"""


def _e(value: object) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _img(png: bytes, alt: str) -> str:
    return f'<img alt="{_e(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def _chip(status: str) -> str:
    colour = STATUS_COLOURS.get(status, STATUS_COLOURS["n/a"])
    return f'<span class="chip" style="background:{colour}">{_e(status)}</span>'


def _card(value: object, label: str, ident: str) -> str:
    return f'<div class="card" id="{ident}"><b>{_e(value)}</b><span class="label">{_e(label)}</span></div>'


def ascii_spelling(text: str) -> str | None:
    """``text`` with every character outside ASCII written as its code point, or None
    for plain ASCII. Ids come from logs an attacker writes: ``admin`` and ``\\u0430dmin``
    (a Cyrillic a), or ``jos\\u00e9`` and ``jose\\u0301`` (e and a combining accent), look
    the same on the page, and a right-to-left letter reorders the characters around it
    (``abc-<Hebrew>-123`` shows as ``abc-123-<Hebrew>``). The spelling is plain
    left-to-right ASCII, so two ids that look alike differ in it (or in having one)."""
    return None if text.isascii() else text.encode("ascii", "backslashreplace").decode("ascii")


def _user_cell(user_id: str) -> str:
    """A user id as a table cell, the one way every table of the page shows one: escaped,
    in a monospace font (``l``/``I``/``1`` and ``O``/``0`` apart) with its spaces kept
    (HTML showed ``ab  cd`` as ``ab cd``), broken anywhere so a long id wraps inside its
    column instead of widening the table past its section (a 256-character id pushed
    every other column out of view), and an id holding anything outside ASCII spelled
    out under it (``ascii_spelling``)."""
    spelled = ascii_spelling(user_id)
    hint = ("" if spelled is None else
            f'<div class="spelled" title="characters outside ASCII as code points">{_e(spelled)}</div>')
    return f'<td class="uid"><div><bdi>{_e(user_id)}</bdi></div>{hint}</td>'


def _reasons(items: Sequence[str] | None) -> str:
    if not items:
        return '<span class="muted">-</span>'
    return '<ul class="reasons">' + "".join(f"<li>{_e(r)}</li>" for r in items) + "</ul>"


LEVEL_COLOURS = {"low": "#607d8b", "medium": "#b26a00", "high": "#c62828", "critical": "#6a1b9a"}


def sparkline_svg(values: Sequence[float], width: int = 120, height: int = 26) -> str:
    """A small inline SVG line of 0-100 values (no script, no external resource)."""
    if not values:
        return '<span class="muted">-</span>'
    step = width / max(len(values) - 1, 1)
    points = " ".join(f"{i * step:.1f},{height - 2 - (min(max(v, 0.0), 100.0) / 100.0) * (height - 4):.1f}"
                      for i, v in enumerate(values))
    return (f'<svg class="spark" width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" '
            f'aria-label="risk over {len(values)} scored days, last {values[-1]:.0f}">'
            f'<polyline fill="none" stroke="#1565c0" stroke-width="1.5" points="{points}"/></svg>')


def _risk_cells(r: Mapping[str, Any], spark: Sequence[float] | None) -> str:
    if "risk_level" not in r:
        return f'<td class="num">{r["risk"]:.2f}</td>'
    level = str(r["risk_level"])
    delta = "-" if r["risk_delta"] is None else f"{r['risk_delta']:+.1f}"
    since = "-" if r["first_seen_high"] is None else r["first_seen_high"].isoformat()
    chip = f'<span class="chip" style="background:{LEVEL_COLOURS.get(level, "#666")}">{_e(level)}</span>'
    return (f'<td class="num">{r["risk"]:.1f}</td><td>{chip}</td><td class="num">{delta}</td>'
            f"<td>{_e(since)}</td><td>{sparkline_svg(spark or [])}</td>")


def _users_table(top: pl.DataFrame, sparklines: Mapping[str, Sequence[float]] | None = None) -> str:
    if top.height == 0:
        return '<p class="muted">No user at risk today.</p>'
    rows = []
    for r in top.iter_rows(named=True):
        max_score = "-" if r["max_score"] is None else f"{r['max_score']:.3f}"
        day_risk = "-" if r["user_day_risk"] is None else f"{r['user_day_risk']:.2f}"
        level = f' data-level="{_e(r["risk_level"])}"' if "risk_level" in r else ""
        rows.append(
            f'<tr class="user" data-user="{_e(r["user_id"])}"{level}>{_user_cell(r["user_id"])}'
            f'{_risk_cells(r, (sparklines or {}).get(r["user_id"]))}<td class="num">{r["alerts"]}</td>'
            f'<td class="num">{r["suppressed"]}</td><td class="num">{max_score}</td>'
            f'<td class="num">{day_risk}</td><td>{_reasons(r["reasons"])}</td></tr>'
        )
    risk_head = ("<th>risk</th><th>level</th><th>&Delta; day</th><th>high since</th><th>30 days</th>"
                 if "risk_level" in top.columns else "<th>risk</th>")
    head = (f"<tr><th>user</th>{risk_head}<th>alerts</th><th>suppressed</th><th>max score</th>"
            "<th>user-day score</th><th>reasons</th></tr>")
    return f'<table id="top-users"><thead>{head}</thead><tbody>{"".join(rows)}</tbody></table>'


def _risk_note(data: ReportData) -> str:
    if not data.entity_risk:
        return ('<p class="muted">Scored before entity risk existed: risk = sum over the user\'s unsuppressed '
                "alerts of score / threshold, plus the user-day score.</p>")
    stale = "".join(f'<p id="risk-stale"><b>Entity risk is stale:</b> {_e(e.get("reason"))}; re-score this day '
                    "to bring it up to date.</p>" for e in data.stale[:1])
    return (stale + '<p class="muted">Entity risk 0-100 (docs/risk.md): today\'s alerts and user-day alerts '
            "plus earlier days' risk decayed by its half-life; every user at high or above is listed.</p>")


def _usual(now: object, usual: float | None) -> str:
    if now is None:
        return "-"
    return f"{now}" if usual is None else f"{now} <span class=muted>(usually {usual:.0f})</span>"


def _user_days_table(days: pl.DataFrame) -> str:
    if days.height == 0:
        return '<p class="muted">No unusual user-days today.</p>'
    rows = []
    for r in days.iter_rows(named=True):
        rows.append(
            f'<tr class="user-day" data-user="{_e(r["user_id"])}">{_user_cell(r["user_id"])}'
            f'<td class="num">{r["day_score"]:.2f}</td>'
            f'<td class="num">{_usual(r.get("n_events"), r.get("usual_events"))}</td>'
            f'<td class="num">{_usual(r.get("n_sessions"), r.get("usual_sessions"))}</td>'
            f'<td class="num">{_usual(r.get("n_downloads"), r.get("usual_downloads"))}</td>'
            f'<td>{_reasons(r["reasons"])}</td></tr>'
        )
    head = ("<tr><th>user</th><th>day score</th><th>events</th><th>sessions</th><th>downloads</th>"
            "<th>reasons</th></tr>")
    return f'<table id="user-days"><thead>{head}</thead><tbody>{"".join(rows)}</tbody></table>'


def _drift_feature_rows(drift: DriftSection, limit: int = 6) -> str:
    """The features the verdict counted, most shifted first. Calendar features (which
    differ every day by design) and features constant in training are left out: their
    PSI says nothing about the model."""
    skipped = set(drift.get("ignored_features", [])) | set(drift.get("unused_features", []))
    excess = drift.get("feature_psi_excess") or {}
    psi_of = drift.get("feature_psi", {})
    judged = {n: excess.get(n, v) for n, v in psi_of.items() if n not in skipped}
    top = sorted(judged.items(), key=lambda kv: (-kv[1], -psi_of[kv[0]], kv[0]))[:limit]
    return "".join(f'<tr><td>{_e(n)}</td><td class="num">{psi_of[n]:.3f}</td>'
                   + (f'<td class="num">{v:.3f}</td>' if excess else "") + "</tr>" for n, v in top)


def _drift_section(manifest: RunManifest, rows: Sequence[MonitoringRow],
                   settings: Settings) -> str:
    drift = manifest.get("drift")
    if not drift:
        return '<p class="muted">This run has no drift check (scored before monitoring was enabled).</p>'
    feature_rows = _drift_feature_rows(drift)
    notes = list(drift.get("why", [])) + list(drift.get("warnings", []))
    advice = retrain_advice(rows)
    excess = drift.get("judged_by") == "excess"
    unit = "excess PSI" if excess else "PSI"
    score = drift.get("score_psi_excess") if excess else drift.get("score_psi")
    feature = drift.get("max_feature_psi_excess") if excess else drift.get("max_feature_psi")
    volume = (f'{drift.get("alerted_users")} users with an alert vs {drift.get("expected_alerted_users")} expected'
              if excess else
              f'alert rate {drift.get("alert_rate", 0):.4f} vs expected {drift.get("expected_alert_rate", 0):.4f}')
    parts = [
        f'<p id="drift-status">Status {_chip(drift.get("status", "n/a"))} '
        f'max feature {unit} <b>{feature or 0:.3f}</b> ({_e(drift.get("max_feature"))}), '
        f'score {unit} <b>{"-" if score is None else f"{score:.3f}"}</b>, {volume}.</p>',
    ]
    if drift.get("retrain_advised"):
        parts.append('<p id="retrain"><b>Retraining advised</b> for this day.</p>')
    if advice:
        parts.append(f'<p class="muted">{_e(advice)}</p>')
    if notes:
        parts.append(_reasons(notes))
    head = "<th>PSI</th><th>excess over chance</th>" if excess else "<th>PSI</th>"
    parts.append(f'<table><thead><tr><th>feature</th>{head}</tr></thead><tbody>{feature_rows}</tbody></table>')
    if len(rows) > 1:
        parts.append(_img(drift_history_png(rows, settings.monitoring.psi_warn, settings.monitoring.psi_drift),
                          "PSI and alert rate over time"))
    return "".join(parts)


def _suppression_section(counts: pl.DataFrame, total: int) -> str:
    if total == 0:
        return '<p class="muted">No alerts were suppressed.</p>'
    rows = "".join(f'<tr><td>{_e(r["rule_id"])}</td><td class="num">{r["suppressed"]}</td></tr>'
                   for r in counts.iter_rows(named=True))
    noun = "alert" if total == 1 else "alerts"
    return (f"<p>{total} {noun} matched a suppression rule: still scored, not counted as alerts.</p>"
            f'<table id="suppressed"><thead><tr><th>rule</th><th>suppressed</th></tr></thead>'
            f"<tbody>{rows}</tbody></table>")


def _triage_section(counts: Mapping[str, Mapping[str, int]]) -> str:
    if not counts:
        return '<p class="muted">No findings to triage on this day.</p>'
    labels = {"event": "flagged events", "user_day": "user-day alerts", "risk": "users at high risk"}
    rows = "".join(
        f'<tr><td>{_e(labels.get(kind, kind))}</td>'
        + "".join(f'<td class="num">{by_status.get(s, 0)}</td>' for s in ("open", "acknowledged", "closed"))
        + "</tr>" for kind, by_status in sorted(counts.items()))
    return ('<table id="triage"><thead><tr><th>finding</th><th>open</th><th>acknowledged</th><th>closed</th>'
            f"</tr></thead><tbody>{rows}</tbody></table>"
            '<p class="muted">By alert id; change with <code>uba-batch alerts ack|close</code> or '
            "<code>PATCH /alerts/{id}</code>.</p>")


def _notices(data: ReportData) -> str:
    """What makes the day's numbers not what they seem, above everything else: scored by a
    model trained on it (in-sample, fewer alerts), or stored events it has not scored."""
    notes = []
    model = data.manifest.get("model", {})
    if model.get("in_training_window"):
        window = model.get("training_window")
        span = f" ({_e(window['start'])}..{_e(window['end'])})" if window else ""
        notes.append(f'<p id="in-sample"><b>Scored in-sample:</b> model {_e(model.get("version"))} was trained on '
                     f'this day{span}, so its events score lower and '
                     "alert less than on a day it never saw; re-score it with a model trained before it.</p>")
    if data.late_events:
        notes.append(f'<p id="late-events"><b>Not every event of this day is scored:</b> {_e(data.late_events)}; '
                     f"re-score it (uba-batch score --date {data.day.isoformat()}).</p>")
    return "".join(notes)


def render_report(data: ReportData, settings: Settings) -> str:
    """The page as one HTML string (no external resources of any kind)."""
    manifest = data.manifest
    today = monitoring_row(manifest)
    model = manifest.get("model", {})  # runs before the model section have none
    alerts = manifest.get("alerts")  # older runs have no section, or one without the key
    per_user = bool(alerts and alerts.get("per_user_thresholds"))
    cards = "".join([
        _card(f"{today['scored']:,}", "events scored", "card-scored"),
        _card(today["alerts"], "alerts", "card-alerts"),
        _card(today["suppressed"], "suppressed", "card-suppressed"),
        _card(data.flagged_users, "unusual user-days", "card-user-days"),
        f'<div class="card" id="card-drift"><b>{_chip(today["status"])}</b><span class="label">drift</span></div>',
    ])
    history = (_img(alert_history_png(data.history, data.day), "alerts per day") if data.history
               else '<p class="muted">No history yet.</p>')
    threshold = model.get("threshold")
    subtitle = (f"model {_e(model.get('version'))} &middot; threshold "
                f"{'-' if threshold is None else f'{threshold:.4f}'} (p{_e(model.get('threshold_percentile'))})"
                f"{' &middot; per-user thresholds on' if per_user else ''}")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>UBA daily report {data.day.isoformat()}</title>
<style>{CSS}</style></head>
<body>
<header><h1>UBA daily report &mdash; {data.day.isoformat()}</h1><p>{subtitle}</p></header>
<main>
{_notices(data)}
<section class="cards">{cards}</section>
<div class="row">
<section class="wide"><h2>Top users by risk</h2>{_users_table(data.top_users, data.sparklines)}
{_risk_note(data)}</section>
<section class="wide"><h2>Unusual user-days ({data.flagged_users})</h2>{_user_days_table(data.user_days)}
<p class="muted">A user's day as a whole (events, sessions, downloads) against their usual days.</p></section>
</div>
<div class="row">
<section><h2>Alerts vs previous days</h2>{history}</section>
<section><h2>Drift</h2>{_drift_section(manifest, data.history, settings)}</section>
</div>
<div class="row">
<section><h2>Suppressed alerts</h2>{_suppression_section(data.suppressions, today["suppressed"])}</section>
<section><h2>Triage</h2>{_triage_section(data.triage)}</section>
</div>
</main>
<footer>Generated {data.generated_at.strftime("%Y-%m-%d %H:%M UTC")} from run {_e(manifest.get("run_id"))}.</footer>
</body></html>
"""


def write_report(settings: Settings, day: date, out: Path | None = None, history_days: int = 14,
                 top: int = 15) -> Path:
    """Build the page for ``day`` and write it (default ``<output-dir>/reports/report-D.html``)."""
    data = load_report_data(settings, day, history_days, top)
    target = out or Path(settings.paths.output_dir) / "reports" / f"report-{day.isoformat()}.html"
    try:
        return io.write_bytes_atomic(render_report(data, settings).encode("utf-8"), target)
    except OSError as exc:  # a mistyped --out (its folder is a file, no permission): one line, no traceback
        raise UserError(f"cannot write the report to {target}: {exc.strerror or exc}") from exc
