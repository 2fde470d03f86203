"""User-level evaluation: does ranking users by entity risk find the planted campaigns?

An analyst's question is "which users should I look at today?", so the unit here is a
user on a day, not an event. On each scored day with at least one active campaign
(``labels/campaigns.parquet``: user, kind, start, end), k is the number of users with
an active campaign, and the users are ranked two ways, side by side:

- by ``risk_score`` from the day's published ``risk/`` table (what analysts see);
- by the user's maximum event ``anomaly_score`` that day (``scores/``), the ranking a
  product without entity risk would offer.

precision@k is the share of the top k that have an active campaign. With k equal to
the number of such users, recall@k is the same number (hits / k): both are reported
because readers ask for both, and they are equal by construction. Time to high is the
number of days from a campaign's start to the first day its user is at risk level high
or above (for the score ranking: to the first unsuppressed alert), counted only within
the campaign; a campaign never reached counts as not reached, and the median is None
when more than half were not reached.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import date
from pathlib import Path
from typing import TypedDict, final

import numpy as np
import polars as pl

from uba import io
from uba.alerting.risk import HIGH_LEVELS, read_risk, rescore_remedy, stale_marker
from uba.generate.store import campaigns_path
from uba.manifest import read_manifest, verify_published
from uba.monitoring.charts import file_backend, png_bytes
from uba.schema import unsuppressed_alert

RISK_TABLE = io.RISK
SCORES_TABLE = "scores"
RANKING_SCHEMA: dict[str, pl.DataType] = {
    "user_id": pl.String(), "event_date": pl.Date(), "value": pl.Float64(), "high": pl.Boolean(),
}


class DayPrecision(TypedDict):
    day: str
    k: int
    hits: int
    precision: float
    recall: float


class PrecisionAtK(TypedDict):
    days: list[DayPrecision]
    mean_precision_at_k: float | None
    mean_recall_at_k: float | None
    days_with_campaigns: int


class CampaignReach(TypedDict):
    user_id: str
    kind: str
    start: str
    days: int | None  # None: never reached within the campaign


class TimeToHigh(TypedDict):
    campaigns: list[CampaignReach]
    reached: int
    total: int
    median_days: float | None


class PrCurve(TypedDict):
    precision: list[float]
    recall: list[float]
    average_precision: float | None
    positives: int


class RankingQuality(TypedDict):
    precision_at_k: PrecisionAtK
    time_to_high: TimeToHigh
    pr_curve: PrCurve


@final  # no other keys: `"skipped" in user_level` tells the two shapes apart
class UserLevelReport(TypedDict):
    """``user_level`` of evaluation.json: both rankings side by side."""

    campaigns: int
    rankings: dict[str, RankingQuality]
    precision_at_k_gain: float | None


@final
class UserLevelSkipped(TypedDict):
    """``user_level`` of evaluation.json when there is nothing to rank: why."""

    skipped: str


def read_campaigns(data_dir: Path) -> pl.DataFrame | None:
    """The campaigns table, or None when the data has none (generated without --campaigns)."""
    frame = io.read_parquet_if_exists(campaigns_path(data_dir))
    if frame is None or frame.height == 0:
        return None
    return frame.select(pl.col("user_id").cast(pl.String), "kind", pl.col("start").cast(pl.Date),
                        pl.col("end").cast(pl.Date))


def missing_risk_days(output_dir: Path, days: Sequence[date]) -> list[date]:
    return [d for d in days if not io.partition_files(output_dir, RISK_TABLE, d)]


def stale_risk_days(output_dir: Path, days: Sequence[date]) -> list[tuple[date, str]]:
    """The days of ``days`` whose risk is marked stale, each with its latest reason: their
    scores still carry what a re-scored earlier day or a late verdict changed."""
    stale = []
    for day in days:
        entries = stale_marker(read_manifest(output_dir, day))
        if entries:
            stale.append((day, str(entries[-1].get("reason", "marked stale"))))
    return stale


def risk_ranking(output_dir: Path, days: Sequence[date]) -> pl.DataFrame:
    """(user, day, risk_score, at high or above) from the published risk tables (``read_risk``,
    the one reader of the table)."""
    frames = []
    for day in days:
        risk = read_risk(output_dir, day)
        if risk is None:
            continue
        frames.append(risk.select(
            pl.col("user_id").cast(pl.String), pl.lit(day, pl.Date).alias("event_date"),
            pl.col("risk_score").cast(pl.Float64).alias("value"),
            pl.col("risk_level").is_in(HIGH_LEVELS).alias("high")))
    return pl.concat(frames) if frames else pl.DataFrame(schema=RANKING_SCHEMA)


def max_score_ranking(output_dir: Path, days: Sequence[date]) -> pl.DataFrame:
    """(user, day, max event score, any unsuppressed alert) from the published scores."""
    for day in days:
        verify_published(output_dir, SCORES_TABLE, day, rescore_remedy(day))
    scanned = io.scan_partitions(output_dir, SCORES_TABLE, days)
    if scanned is None:
        return pl.DataFrame(schema=RANKING_SCHEMA)
    alert = unsuppressed_alert(scanned.collect_schema().names())
    return (scanned.with_columns(pl.col("timestamp").dt.date().alias("event_date"))
            .group_by("user_id", "event_date")
            .agg(pl.col("anomaly_score").max().alias("value"), alert.any().alias("high"))
            .select(pl.col("user_id").cast(pl.String), "event_date", pl.col("value").cast(pl.Float64), "high")
            .collect())


def active_users(campaigns: pl.DataFrame, day: date) -> set[str]:
    live = campaigns.filter((pl.col("start") <= day) & (pl.col("end") >= day))
    return set(live["user_id"].to_list())


def precision_at_k(ranking: pl.DataFrame, campaigns: pl.DataFrame, days: Sequence[date]) -> PrecisionAtK:
    """Per day with an active campaign: k, hits in the top k, precision@k and recall@k."""
    per_day: list[DayPrecision] = []
    for day in days:
        positives = active_users(campaigns, day)
        if not positives:
            continue
        k = len(positives)
        top = (ranking.filter(pl.col("event_date") == day).sort(["value", "user_id"], descending=[True, False])
               .head(k)["user_id"].to_list())
        hits = len(positives.intersection(top))
        per_day.append({"day": day.isoformat(), "k": k, "hits": hits, "precision": hits / k, "recall": hits / k})
    mean = (sum(d["precision"] for d in per_day) / len(per_day)) if per_day else None
    return {"days": per_day, "mean_precision_at_k": mean, "mean_recall_at_k": mean,
            "days_with_campaigns": len(per_day)}


def time_to_high(ranking: pl.DataFrame, campaigns: pl.DataFrame) -> TimeToHigh:
    """Days from each campaign's start to its user's first ``high`` day within the campaign."""
    rows: list[CampaignReach] = []
    for c in campaigns.sort("start", "user_id").iter_rows(named=True):
        high_days = ranking.filter((pl.col("user_id") == c["user_id"]) & pl.col("high")
                                   & pl.col("event_date").is_between(c["start"], c["end"]))["event_date"]
        first = high_days.min() if high_days.len() else None
        rows.append({"user_id": c["user_id"], "kind": c["kind"], "start": c["start"].isoformat(),
                     "days": None if first is None else (first - c["start"]).days})
    reached = [float(r["days"]) for r in rows if r["days"] is not None]
    values = sorted(reached + [math.inf] * (len(rows) - len(reached)))
    median = float(np.median(values)) if values else None
    return {"campaigns": rows, "reached": len(reached), "total": len(rows),
            "median_days": None if median is None or math.isinf(median) else median}


def pr_curve(ranking: pl.DataFrame, campaigns: pl.DataFrame, days: Sequence[date]) -> PrCurve:
    """Pooled user-day precision-recall over the days with a campaign (average precision too).

    Every (user, day) of the ranking on those days is a candidate; a campaign user with
    no row that day is a positive the ranking never reaches."""
    campaign_days = [d for d in days if active_users(campaigns, d)]
    pairs = ranking.filter(pl.col("event_date").is_in(campaign_days))
    positives = {(u, d) for d in campaign_days for u in active_users(campaigns, d)}
    if not positives:
        return {"precision": [], "recall": [], "average_precision": None, "positives": 0}
    ordered = pairs.sort(["value", "user_id"], descending=[True, False])
    hit = np.array([(u, d) in positives for u, d in zip(ordered["user_id"], ordered["event_date"], strict=True)])
    hits = np.cumsum(hit)
    precision = hits / np.arange(1, len(hit) + 1) if len(hit) else np.array([])
    recall = hits / len(positives)
    ap = float(np.sum(precision[hit]) / len(positives)) if len(hit) else 0.0
    step = max(1, len(hit) // 400)  # enough points to draw, not thousands in the JSON
    return {"precision": precision[::step].round(4).tolist(), "recall": recall[::step].round(4).tolist(),
            "average_precision": ap, "positives": len(positives)}


def user_level_report(output_dir: Path, data_dir: Path, days: Sequence[date]) -> UserLevelReport | UserLevelSkipped:
    """Both rankings side by side, or why there is no user-level evaluation."""
    campaigns = read_campaigns(data_dir)
    if campaigns is None:
        return {"skipped": f"no campaigns in {campaigns_path(data_dir)} (generate --campaigns N)"}
    missing = missing_risk_days(output_dir, days)
    if missing:
        return {"skipped": f"no risk/ table for {len(missing)} of {len(days)} days (first {missing[0]}): "
                           f"score them first (uba-batch backfill --start {days[0]} --end {days[-1]})"}
    stale = stale_risk_days(output_dir, days)
    if stale:  # ranked on them, the numbers would be those of risk the analysts no longer see
        return {"skipped": f"the entity risk of {len(stale)} of {len(days)} days is stale (first {stale[0][0]}: "
                           f"{stale[0][1]}): re-score them first (uba-batch backfill --start {stale[0][0]} "
                           f"--end {days[-1]})"}
    rankings = {"risk_score": risk_ranking(output_dir, days), "max_event_score": max_score_ranking(output_dir, days)}
    quality: dict[str, RankingQuality] = {
        name: {"precision_at_k": precision_at_k(ranking, campaigns, days),
               "time_to_high": time_to_high(ranking, campaigns),
               "pr_curve": pr_curve(ranking, campaigns, days)}
        for name, ranking in rankings.items()}
    risk_p = quality["risk_score"]["precision_at_k"]["mean_precision_at_k"]
    score_p = quality["max_event_score"]["precision_at_k"]["mean_precision_at_k"]
    return {"campaigns": campaigns.height, "rankings": quality,
            "precision_at_k_gain": None if risk_p is None or score_p is None else risk_p - score_p}


def plot_user_pr(report: UserLevelReport, path: Path) -> Path:
    """The user-level precision-recall curves of both rankings, in one figure."""
    file_backend()
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4.2))
    for name, ranking in report["rankings"].items():
        curve = ranking["pr_curve"]
        ap = curve["average_precision"]
        label = f"{name} (AP {ap:.2f}, P@k {ranking['precision_at_k']['mean_precision_at_k']:.2f})"
        ax.plot(curve["recall"], curve["precision"], label=label)
    ax.set_xlabel("recall (campaign user-days)")
    ax.set_ylabel("precision")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_title("Users ranked per day: entity risk vs max event score")
    ax.legend(loc="best", fontsize=8)  # low curves run along the bottom: a fixed corner hid them
    fig.tight_layout()
    return io.write_bytes_atomic(png_bytes(fig, dpi=110), path)
