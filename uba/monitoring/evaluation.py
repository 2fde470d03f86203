"""`evaluate`: how well the detector finds the labelled anomalies of generated data.

Labels are read here and nowhere else: training and scoring never see them. The
report scores days the model never trained on, and puts a naive global
IsolationForest on the raw event fields beside it, because "better than an
unpersonalised model" is the claim this product makes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import NotRequired, TypedDict

import numpy as np
import polars as pl
from sklearn.ensemble import IsolationForest
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score
from sklearn.preprocessing import StandardScaler

from uba import io
from uba.alerting.thresholds import bundle_user_cuts, user_cut_array
from uba.errors import UserError
from uba.features.pipeline import (
    date_range,
    feature_matrix,
    load_scoring_bundle,
    training_days,
    window_features,
)
from uba.manifest import AlertSpread, Concentration
from uba.model.bundle import Bundle
from uba.monitoring.charts import file_backend, png_bytes
from uba.monitoring.user_evaluation import (
    UserLevelReport,
    UserLevelSkipped,
    plot_user_pr,
    user_level_report,
)
from uba.schema import JsonValue
from uba.settings import Settings


@dataclass(frozen=True)
class Scored:
    """Scores and labels of the evaluation days for one model."""

    name: str
    scores: np.ndarray
    threshold: float


@dataclass(frozen=True)
class Curves:
    """What the figure draws and the JSON leaves out: the labels and both models' scores."""

    labels: np.ndarray
    ours: Scored
    naive: Scored


class KindRecall(TypedDict):
    events: int
    recall: float


class ModelMetrics(TypedDict):
    model: str
    events: int
    anomalies: int
    roc_auc: float
    pr_auc: float
    threshold: float
    flagged: int
    alert_rate: float
    precision_at_threshold: float
    recall_at_threshold: float
    recall_by_kind: dict[str, KindRecall]


class ConcentrationComparison(TypedDict):
    global_threshold: Concentration
    per_user_thresholds: Concentration


class PerUserComparison(TypedDict):
    enabled_in_settings: bool
    settings: dict[str, JsonValue]  # the user_thresholds settings as JSON
    users_with_own_threshold: int
    metrics: ModelMetrics
    alert_concentration: ConcentrationComparison


class EvaluationReport(TypedDict):
    """evaluation.json."""

    model_version: str
    training_window: Mapping[str, object]  # the bundle's, as stored
    evaluation_days: list[str]
    configured_alert_rate: float
    models: dict[str, ModelMetrics]
    alert_concentration: AlertSpread
    per_user_thresholds: PerUserComparison
    pr_auc_ratio_vs_naive: float
    user_level: NotRequired[UserLevelReport | UserLevelSkipped]  # added by run_evaluation


@dataclass(frozen=True)
class Evaluation:
    """The report of one evaluation and the arrays its figure is drawn from."""

    report: EvaluationReport
    curves: Curves


def read_labels(data_dir: Path) -> pl.DataFrame:
    """Event labels written by `generate`; real logs have none, so evaluation needs generated data."""
    path = Path(data_dir) / io.LABELS / "labels.parquet"
    labels = io.read_parquet_if_exists(path)
    if labels is None:
        raise UserError(f"no labels at {path}: evaluate needs data made by `uba-batch generate`")
    return labels.select("event_id", "is_anomaly", "kind")


def raw_matrix(events: pl.DataFrame, settings: Settings) -> np.ndarray:
    """The seed's event-level fields only: what a model without user context sees."""
    exprs = [
        pl.col("session_duration_sec").cast(pl.Float64),
        pl.col("events_in_session").cast(pl.Float64),
        pl.col("hour_of_day").cast(pl.Float64),
        pl.col("day_of_week").cast(pl.Float64),
        pl.col("event_type").replace_strict(list(settings.events.event_types),
                                            list(range(len(settings.events.event_types))),
                                            default=-1, return_dtype=pl.Float64),
        pl.col("device_type").replace_strict(list(settings.events.device_types),
                                             list(range(len(settings.events.device_types))),
                                             default=-1, return_dtype=pl.Float64),
    ]
    return events.select(exprs).to_numpy().astype(np.float64)


def naive_global_model(train_events: pl.DataFrame, test_events: pl.DataFrame, settings: Settings) -> Scored:
    """Scaler + IsolationForest on raw fields, same parameters and percentile as the product."""
    scaler = StandardScaler().fit(raw_matrix(train_events, settings))
    forest = IsolationForest(
        n_estimators=settings.model.n_estimators,
        contamination=settings.model.contamination,
        max_samples=settings.model.max_samples,
        random_state=settings.model.random_state,
    ).fit(scaler.transform(raw_matrix(train_events, settings)))
    train_scores = -forest.score_samples(scaler.transform(raw_matrix(train_events, settings)))
    threshold = float(np.percentile(train_scores, settings.threshold.percentile))
    scores = -forest.score_samples(scaler.transform(raw_matrix(test_events, settings)))
    return Scored("naive_global_iforest", scores, threshold)


def metrics(scored: Scored, labels: pl.DataFrame) -> ModelMetrics:
    """Ranking quality (ROC-AUC, PR-AUC) and the operating point at the saved threshold."""
    y = labels["is_anomaly"].to_numpy().astype(bool)
    flagged = scored.scores >= scored.threshold
    true_pos = int((flagged & y).sum())
    per_kind: dict[str, KindRecall] = {}
    kinds = labels["kind"].to_numpy()
    for kind in sorted({k for k in kinds if k is not None and k != "normal"}):
        mask = kinds == kind
        per_kind[kind] = {"events": int(mask.sum()), "recall": float(flagged[mask].mean())}
    return {
        "model": scored.name,
        "events": int(y.size),
        "anomalies": int(y.sum()),
        "roc_auc": float(roc_auc_score(y, scored.scores)),
        "pr_auc": float(average_precision_score(y, scored.scores)),
        "threshold": scored.threshold,
        "flagged": int(flagged.sum()),
        "alert_rate": float(flagged.mean()),
        "precision_at_threshold": true_pos / max(int(flagged.sum()), 1),
        "recall_at_threshold": true_pos / max(int(y.sum()), 1),
        "recall_by_kind": per_kind,
    }


def alert_concentration(user_ids: Sequence[str], flagged: np.ndarray) -> AlertSpread:
    """How concentrated alerts are on a few users: analysts drown when one noisy user dominates."""
    frame = pl.DataFrame({"user_id": list(user_ids), "flagged": flagged})
    per_user = frame.group_by("user_id").agg(pl.col("flagged").sum()).sort("flagged", descending=True)
    total = int(frame["flagged"].sum())
    n_users = per_user.height
    top = max(1, int(np.ceil(n_users * 0.01)))
    top_share = float(per_user["flagged"].head(top).sum() / total) if total else 0.0
    return {
        "users": n_users,
        "users_with_alerts": int((per_user["flagged"] > 0).sum()),
        "top_1pct_users": top,
        "top_1pct_share_of_alerts": top_share,
        "max_alerts_one_user": int(per_user["flagged"].to_numpy().max(initial=0)),
    }


def concentration_comparison(user_ids: Sequence[str], scores: np.ndarray, global_threshold: float,
                             user_cuts: np.ndarray) -> ConcentrationComparison:
    """Alert concentration across users with the global cut and with per-user cuts, side by side."""
    scores = np.asarray(scores, dtype=np.float64)
    without = scores >= float(global_threshold)
    with_user = scores >= np.asarray(user_cuts, dtype=np.float64)
    return {
        "global_threshold": {**alert_concentration(list(user_ids), without), "alerts": int(without.sum())},
        "per_user_thresholds": {**alert_concentration(list(user_ids), with_user), "alerts": int(with_user.sum())},
    }


def per_user_comparison(settings: Settings, bundle: Bundle, user_ids: Sequence[str], scores: np.ndarray,
                        labels: pl.DataFrame) -> PerUserComparison:
    """`evaluate`'s metrics for the same events with per-user thresholds, and the alert
    concentration both ways, so the effect of the option can be judged before enabling it.

    Scores are shifted by each user's cut (``score - t_u + T``): the operating point is
    then exactly "over the user's own threshold", and the ranking metrics describe the
    per-user ranking an analyst would see.
    """
    global_threshold = float(bundle.detector.threshold)
    cuts = bundle_user_cuts(settings, bundle)
    user_cuts = user_cut_array(user_ids, cuts, global_threshold)
    shifted = np.asarray(scores, dtype=np.float64) - user_cuts + global_threshold
    return {
        "enabled_in_settings": settings.user_thresholds.enabled,
        "settings": settings.user_thresholds.model_dump(mode="json"),
        "users_with_own_threshold": int(cuts.height),
        "metrics": metrics(Scored("uba_per_user_thresholds", shifted, global_threshold), labels),
        "alert_concentration": concentration_comparison(user_ids, scores, global_threshold, user_cuts),
    }


def evaluation_frame(settings: Settings, bundle: Bundle, days: Sequence[date]) -> pl.DataFrame:
    """Out-of-sample features of the evaluation days joined with their labels."""
    features = window_features(settings.paths.data_dir, days, settings).collect()
    labels = read_labels(settings.paths.data_dir)
    joined = features.join(labels, on="event_id", how="left").with_columns(
        pl.col("is_anomaly").fill_null(False), pl.col("kind").fill_null("normal")
    )
    return joined.sort("event_id")


def evaluate(settings: Settings, bundle: Bundle, days: Sequence[date]) -> Evaluation:
    """Report for the bundle and the naive model on ``days``, which must lie outside training."""
    trained = set(training_days(bundle))
    overlap = sorted(trained & set(days))
    if overlap:
        raise UserError(f"evaluation days overlap the training window ({overlap[0]}..): not out of sample")
    frame = evaluation_frame(settings, bundle, days)
    ours = Scored("uba_user_baseline_iforest",
                  bundle.detector.anomaly_scores(feature_matrix(frame, bundle.detector.feature_names)),
                  float(bundle.detector.threshold))
    train_events = pl.concat([io.scan_events(settings.paths.data_dir, d) for d in sorted(trained)
                              if io.partition_files(settings.paths.data_dir, io.EVENTS, d)]).collect()
    naive = naive_global_model(train_events, frame, settings)
    labels = frame.select("event_id", "is_anomaly", "kind")
    models = {s.name: metrics(s, labels) for s in (ours, naive)}
    report: EvaluationReport = {
        "model_version": bundle.version,
        "training_window": bundle.metadata["training_window"],
        "evaluation_days": [d.isoformat() for d in days],
        "configured_alert_rate": round(1 - settings.threshold.percentile / 100, 6),
        "models": models,
        "alert_concentration": alert_concentration(frame["user_id"].to_list(), ours.scores >= ours.threshold),
        # the same days with per-user thresholds, side by side
        "per_user_thresholds": per_user_comparison(settings, bundle, frame["user_id"].to_list(), ours.scores,
                                                   labels),
        "pr_auc_ratio_vs_naive": models[ours.name]["pr_auc"] / max(models[naive.name]["pr_auc"], 1e-12),
    }
    return Evaluation(report, Curves(labels["is_anomaly"].to_numpy(), ours, naive))


def plot_report(evaluation: Evaluation, path: Path) -> Path:
    """PR curves of both models and our score histogram with the threshold, in one PNG."""
    file_backend()
    import matplotlib.pyplot as plt

    report, curves = evaluation.report, evaluation.curves
    y = curves.labels
    fig, (ax_pr, ax_hist) = plt.subplots(1, 2, figsize=(12, 4.5))
    for scored in (curves.ours, curves.naive):
        precision, recall, _ = precision_recall_curve(y, scored.scores)
        auc = report["models"][scored.name]["pr_auc"]
        ax_pr.plot(recall, precision, label=f"{scored.name} (PR-AUC {auc:.3f})")
    ax_pr.set(xlabel="recall", ylabel="precision", title="Precision-recall, out of sample", ylim=(0, 1.02))
    ax_pr.legend(loc="lower left", fontsize=8)
    ours = curves.ours
    bins = np.linspace(float(ours.scores.min()), float(ours.scores.max()), 60)
    ax_hist.hist(ours.scores[~y], bins=bins, alpha=0.6, label="normal", log=True)
    ax_hist.hist(ours.scores[y], bins=bins, alpha=0.6, label="labelled anomaly", log=True)
    ax_hist.axvline(ours.threshold, color="black", linestyle="--", label=f"threshold {ours.threshold:.3f}")
    ax_hist.set(xlabel="anomaly score", ylabel="events (log)", title="Score distribution")
    ax_hist.legend(fontsize=8)
    fig.tight_layout()
    return io.write_bytes_atomic(png_bytes(fig, dpi=90), path)


def evaluation_days(data_dir: Path, training_end: date, start: date | None, end: date | None) -> list[date]:
    """The out-of-sample days: by default every stored day after training, else the given
    range, whose missing end falls back to the day after training or the last stored day."""
    stored = io.partition_dates(data_dir, io.EVENTS)
    if start is None and end is None:
        return [d for d in stored if d > training_end]
    first = start or training_end + timedelta(days=1)
    last = end or max(stored, default=first)
    return date_range(first, last)


@dataclass(frozen=True)
class EvaluationRun:
    """A written evaluation: the full report (event and user level) and where it went."""

    report: EvaluationReport
    json_path: Path
    png_path: Path


def run_evaluation(settings: Settings, start: date | None, end: date | None, model_version: str | None,
                   out_dir: Path | None) -> EvaluationRun:
    """Evaluate a bundle on days it never saw and write evaluation.json and the figures.

    The default report directory is <output-dir>/evaluation; user-level figures are
    written only when the labels have campaigns and their days were scored.
    """
    bundle = load_scoring_bundle(settings, model_version)
    training_end = date.fromisoformat(bundle.metadata["training_window"]["end"])
    days = evaluation_days(Path(settings.paths.data_dir), training_end, start, end)
    if not days:
        raise UserError(f"no events after the training window (ends {training_end}) to evaluate on")
    evaluation = evaluate(settings, bundle, days)
    report = evaluation.report
    user_level = user_level_report(Path(settings.paths.output_dir), Path(settings.paths.data_dir), days)
    report["user_level"] = user_level
    target = out_dir if out_dir is not None else Path(settings.paths.output_dir) / "evaluation"
    try:
        io.write_json_atomic(report, target / "evaluation.json")
        plot_report(evaluation, target / "evaluation.png")
        if "skipped" not in user_level:
            plot_user_pr(user_level, target / "evaluation_users.png")
    except OSError as exc:  # a mistyped --out (under a file, no permission): one line, no traceback
        raise UserError(f"cannot write the report to {target}: {exc.strerror or exc}") from exc
    return EvaluationRun(report, target / "evaluation.json", target / "evaluation.png")
