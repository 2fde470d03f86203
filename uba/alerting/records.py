"""One canonical record per finding of a scored day, the source of every export format.

Three kinds of finding:

- ``event``: a flagged event that is not suppressed (``flagged/``);
- ``user_day``: a user-day alert (``flagged_users/``);
- ``risk``: a user whose entity risk is at or above a level (``risk/``, when the run
  computed it).

The alert id is a hash of what was detected, never of the model or the run: the event
id for an event alert, the user and the day for a user-day alert, the user, the day and
the level for a risk alert, each with its kind. Re-scoring a day, a new model or
``backfill --force`` finds the same things under the same ids, so a receiver that
de-duplicates by id never sees one finding twice under two names.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from pathlib import Path
from typing import TypedDict, cast

import polars as pl

from uba import io
from uba.alerting.risk import read_risk, rescore_remedy
from uba.errors import UserError, first_line
from uba.manifest import read_manifest
from uba.schema import alert_id, unsuppressed_alert

RISK = "risk"
RISK_LEVELS = ("low", "medium", "high", "critical")
RECORD_SCHEMA: dict[str, pl.DataType] = {
    "alert_id": pl.String(),
    "alert_type": pl.String(),
    "user_id": pl.String(),
    "time": pl.Datetime("us", "UTC"),
    "event_date": pl.Date(),
    "event_id": pl.String(),
    "score": pl.Float64(),
    "threshold": pl.Float64(),
    "severity": pl.String(),
    "reasons": pl.List(pl.String()),
    "reason_kinds": pl.List(pl.String()),
    "model_version": pl.String(),
    "run_id": pl.String(),
    "run_ref": pl.String(),
}
SEVERITIES = ("low", "medium", "high", "critical")


class AlertRecord(TypedDict):
    """One row of ``RECORD_SCHEMA`` as Python values (``DataFrame.to_dicts``): what every
    export format and sink payload is rendered from."""

    alert_id: str
    alert_type: str
    user_id: str
    time: datetime
    event_date: date
    event_id: str | None
    score: float
    threshold: float | None
    severity: str
    reasons: list[str] | None
    reason_kinds: list[str] | None
    model_version: str | None
    run_id: str
    run_ref: str


def alert_records(frame: pl.DataFrame) -> list[AlertRecord]:
    """The rows of a ``RECORD_SCHEMA`` frame as records (polars gives untyped dicts)."""
    return cast(list[AlertRecord], frame.to_dicts())


@dataclass(frozen=True)
class RunInfo:
    """What every record of a day says about the run that found it."""

    run_id: str
    model_version: str | None
    run_ref: str


class DayNotScoredError(UserError):
    """The day has no published run: a wrong date asked for, not a damaged day."""

    def __init__(self, message: str, day: date) -> None:
        super().__init__(message)
        self.day = day


def run_info(output_dir: Path, day: date) -> RunInfo:
    """The day's run, or a one-line error when the day was never scored."""
    manifest = read_manifest(output_dir, day)
    if manifest is None:
        raise DayNotScoredError(f"{day} is not scored in {output_dir} (no {io.RUNS}/event_date={day}/"
                        f"{io.MANIFEST_NAME}); run `uba-batch score --date {day}` first", day)
    run_id = manifest.get("run_id") or ""
    ref = f"{io.RUNS}/event_date={day.isoformat()}/{io.MANIFEST_NAME}#run={run_id}"
    model = manifest.get("model")
    return RunInfo(run_id=run_id, model_version=model.get("version") if model else None, run_ref=ref)


def _severity(margin: pl.Expr) -> pl.Expr:
    """How far over its cut a finding is, in four steps (documented in docs/alerting.md)."""
    return (pl.when(margin >= 0.15).then(pl.lit("critical"))
            .when(margin >= 0.08).then(pl.lit("high"))
            .when(margin >= 0.03).then(pl.lit("medium"))
            .otherwise(pl.lit("low")))


def _with_run(frame: pl.DataFrame, run: RunInfo) -> pl.DataFrame:
    """Outputs written before reason kinds existed still make records, with none."""
    if "reason_kinds" not in frame.columns:
        frame = frame.with_columns(pl.lit([], pl.List(pl.String)).alias("reason_kinds"))
    return frame.with_columns(
        pl.lit(run.run_id).alias("run_id"), pl.lit(run.run_ref).alias("run_ref"),
        *([] if "model_version" in frame.columns else [pl.lit(run.model_version, pl.String).alias("model_version")]),
    ).select([pl.col(c).cast(t) for c, t in RECORD_SCHEMA.items()])


def event_records(output_dir: Path, day: date, run: RunInfo) -> pl.DataFrame:
    """One record per flagged, unsuppressed event of ``day``, most anomalous first."""
    table = io.read_partition(output_dir, io.FLAGGED, day, rescore_remedy(day))
    if table is None:
        return pl.DataFrame(schema=RECORD_SCHEMA)
    flagged = table.filter(unsuppressed_alert(table.columns))
    per_user = "user_threshold" in flagged.columns  # absent in runs before per-user cuts
    cut = pl.coalesce("user_threshold", "threshold") if per_user else pl.col("threshold")
    frame = flagged.with_columns(
        pl.col("event_id").map_elements(lambda e: alert_id("event", e), return_dtype=pl.String).alias("alert_id"),
        pl.lit("event").alias("alert_type"),
        pl.col("timestamp").alias("time"),
        pl.lit(day).alias("event_date"),
        pl.col("anomaly_score").alias("score"),
        cut.alias("threshold"),
        _severity(pl.col("anomaly_score") - cut).alias("severity"),
    )
    return _with_run(frame, run).sort(["score", "event_id"], descending=[True, False])


def user_day_records(output_dir: Path, day: date, run: RunInfo) -> pl.DataFrame:
    """One record per user-day alert of ``day``. Its score is the day's sum of signal
    strengths (``day_score``; ``risk_score`` in runs before entity risk existed); any
    firing signal makes an alert, so the threshold is 0."""
    users = io.read_partition(output_dir, io.FLAGGED_USERS, day, rescore_remedy(day))
    if users is None:
        return pl.DataFrame(schema=RECORD_SCHEMA)
    score = "day_score" if "day_score" in users.columns else "risk_score"
    frame = users.with_columns(
        pl.col("user_id").map_elements(lambda u: alert_id("user_day", u, day.isoformat()),
                                       return_dtype=pl.String).alias("alert_id"),
        pl.lit("user_day").alias("alert_type"),
        pl.lit(datetime.combine(day, time(), UTC)).alias("time"),
        pl.lit(day).alias("event_date"),
        pl.lit(None, pl.String).alias("event_id"),
        pl.col(score).cast(pl.Float64).alias("score"),
        pl.lit(0.0).alias("threshold"),
        _severity(pl.col(score).cast(pl.Float64) / 10.0).alias("severity"),
    )
    return _with_run(frame, run).sort(["score", "user_id"], descending=[True, False])


class _Contribution(TypedDict):
    """The fields of one stored risk contribution (``uba.alerting.risk.CONTRIBUTION``) read here."""

    type: str | None
    points: float | None
    reason_kinds: list[str] | None


class _RiskRow(TypedDict):
    """The fields of one risk-table row read here."""

    risk_score: float
    risk_level: str
    contributions: list[_Contribution] | None


def _risk_reasons(row: _RiskRow) -> tuple[list[str], list[str]]:
    """Parallel reasons and kinds of a risk record: the points each top reason kind
    brought today, biggest first, or the carried-over score when nothing new came."""
    by_kind: dict[str, list[float]] = {}
    for c in row.get("contributions") or []:
        kind = (c.get("reason_kinds") or [c.get("type") or "alert"])[0]
        by_kind.setdefault(kind, []).append(float(c.get("points") or 0.0))
    if not by_kind:
        return [f"entity risk {row['risk_score']:.1f} ({row['risk_level']}) carried over from earlier days"], \
            ["carried_risk"]
    ranked = sorted(by_kind.items(), key=lambda kv: (-sum(kv[1]), kv[0]))
    reasons = [f"{kind}: {sum(points):.1f} points from {len(points)} alert{'s' if len(points) > 1 else ''} today"
               for kind, points in ranked]
    return reasons, [kind for kind, _ in ranked]


def _risk_cuts(output_dir: Path, day: date) -> dict[str, float]:
    """The day's risk level cuts by level from its manifest (none for runs before entity risk)."""
    manifest = read_manifest(output_dir, day)
    risk = manifest.get("risk") if manifest else None
    cuts = risk.get("cuts") if risk else None
    return {"medium": cuts["medium"], "high": cuts["high"], "critical": cuts["critical"]} if cuts else {}


def risk_records(output_dir: Path, day: date, run: RunInfo, min_level: str) -> pl.DataFrame:
    """One record per user whose entity risk on ``day`` is ``min_level`` or above; its
    threshold is the cut of the user's level (from the run's manifest)."""
    if min_level not in RISK_LEVELS:
        raise UserError(f"risk level {min_level!r} is not one of {', '.join(RISK_LEVELS)}")
    table = read_risk(output_dir, day)  # the one reader: an unreadable part is named, not a traceback
    if table is None:
        raise UserError(f"{day} has no entity risk in {output_dir}/{RISK}/ (scored before entity risk existed?); "
                        "re-score the day to compute it")
    wanted = RISK_LEVELS[RISK_LEVELS.index(min_level):]
    risky = table.filter(pl.col("risk_level").is_in(wanted))
    cuts = _risk_cuts(output_dir, day)
    explained = [_risk_reasons(row) for row in cast(list[_RiskRow], risky.to_dicts())]
    frame = risky.with_columns(
        pl.struct("user_id", "risk_level").map_elements(
            lambda r: alert_id("risk", r["user_id"], day.isoformat(), r["risk_level"]),
            return_dtype=pl.String).alias("alert_id"),
        pl.lit("risk").alias("alert_type"),
        pl.lit(datetime.combine(day, time(), UTC)).alias("time"),
        pl.lit(day).alias("event_date"),
        pl.lit(None, pl.String).alias("event_id"),
        pl.col("risk_score").cast(pl.Float64).alias("score"),
        pl.col("risk_level").replace_strict(list(RISK_LEVELS), [float(cuts.get(level, 0.0)) for level in RISK_LEVELS],
                                            return_dtype=pl.Float64).alias("threshold"),
        pl.col("risk_level").alias("severity"),
        pl.Series("reasons", [r for r, _ in explained], dtype=pl.List(pl.String)),
        pl.Series("reason_kinds", [k for _, k in explained], dtype=pl.List(pl.String)),
    )
    return _with_run(frame, run).sort(["score", "user_id"], descending=[True, False])


def _named(output_dir: Path, dataset: str, day: date, read: Callable[[], pl.DataFrame]) -> pl.DataFrame:
    """``read()`` of a published ``flagged/`` or ``flagged_users/`` table of ``day``, whose
    failure is a CorruptPartError naming the part (or the day's folder) and the re-score
    that rewrites it, as ``read_risk`` names a risk part: a truncated ``flagged/`` part of
    one day was a polars error, and a 500 from PATCH /alerts/{id} of an alert on another
    day. The parts are checked only after a failure: a search over many days reads each
    footer once."""
    try:
        return read()
    except pl.exceptions.PolarsError as exc:
        for part in io.partition_files(output_dir, dataset, day):
            io.check_readable(part, rescore_remedy(day))
        raise io.CorruptPartError(f"the {dataset} table of {day.isoformat()} under "
                                  f"{io.partition_dir(output_dir, dataset, day)} does not read as one ({first_line(exc)}); "
                                  f"{rescore_remedy(day)}") from exc


def day_records(output_dir: Path, day: date, what: str, risk_min_level: str = "high") -> pl.DataFrame:
    """The ``what`` records of ``day``: ``alerts`` (events), ``user-days``, ``risk`` or ``all``."""
    run = run_info(output_dir, day)
    readers: dict[str, Callable[[], pl.DataFrame]] = {
        "alerts": lambda: _named(output_dir, io.FLAGGED, day, lambda: event_records(output_dir, day, run)),
        "user-days": lambda: _named(output_dir, io.FLAGGED_USERS, day, lambda: user_day_records(output_dir, day, run)),
        "risk": lambda: risk_records(output_dir, day, run, risk_min_level),  # read_risk names its parts itself
    }
    if what == "all":
        parts = [readers["alerts"](), readers["user-days"]()]
        if io.partition_files(output_dir, RISK, day):
            parts.append(readers["risk"]())
        return pl.concat(parts)
    if what not in readers:
        raise UserError(f"--what {what!r} is not one of alerts, user-days, risk, all")
    return readers[what]()
