"""Per-user adaptive thresholds.

One global cut makes a naturally erratic user produce a large share of all alerts,
while a very regular user's small departure from habit never reaches it. Each user's
cut is therefore moved by how far the user's own scores sit above (or below) everyone
else's, at a robust quantile ``q`` of the training scores (``user_quantile``, 0.9)::

    w   = n / (n + prior_events)             n = the user's scored training events
    t_u = clip(T + w * (q_u - q_pop), min_ratio * T, max_ratio * T)

``T`` is the model's global threshold and ``q_pop`` the same quantile over all
training events: the user's own cut ``T + q_u - q_pop`` is shrunk toward ``T`` when
the history is short. A mid-high quantile (not the 98th) is used on purpose: it is
stable with a few dozen events and hardly moved by the rare true anomalies in the
training window, so a user attacked during training is not granted a higher cut.
The clip bounds how far history can move a cut, so an erratic user is damped but
never invisible. Users the model never saw get ``T``.

The per-user table is derived data: built from the bundle's training scores, stored
next to the bundle (``user_scores-q<q>.parquet``, with the population quantile in the
row ``POPULATION_USER``) and rebuilt from the training window whenever it is missing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import polars as pl

from uba import io
from uba.alerting.feedback import Rule, suppressing_rules
from uba.errors import BundleError
from uba.features.baselines import POPULATION_USER
from uba.features.pipeline import feature_matrix, training_days, window_features
from uba.logs import get_logger
from uba.manifest import Concentration
from uba.model.bundle import Bundle, read_user_score_history

if TYPE_CHECKING:
    from uba.settings import Settings, UserThresholdSettings

log = get_logger("thresholds")

HISTORY_SCHEMA: dict[str, pl.DataType] = {
    "user_id": pl.String(),
    "n": pl.Int64(),
    "user_quantile": pl.Float64(),
}


def score_history(scored: pl.LazyFrame, quantile: float) -> pl.LazyFrame:
    """Per user (and once for everyone, as ``POPULATION_USER``): event count and ``quantile`` score."""
    q = pl.col("anomaly_score").quantile(quantile, interpolation="linear").alias("user_quantile")
    users = scored.group_by("user_id").agg(pl.len().cast(pl.Int64).alias("n"), q)
    everyone = scored.select(pl.lit(POPULATION_USER, pl.String).alias("user_id"),
                             pl.len().cast(pl.Int64).alias("n"), q)
    return pl.concat([users.sort("user_id"), everyone], how="vertical_relaxed").select(
        pl.col("user_id").cast(pl.String), pl.col("n").cast(pl.Int64), pl.col("user_quantile").cast(pl.Float64)
    )


def user_thresholds(history: pl.LazyFrame, global_threshold: float,
                    settings: UserThresholdSettings) -> pl.LazyFrame:
    """One cut per user with history: the global threshold moved by the user's shrunk excess score."""
    t = float(global_threshold)
    population = history.filter(pl.col("user_id") == POPULATION_USER).select(
        pl.col("user_quantile").alias("_q_pop"))
    n = pl.col("n").cast(pl.Float64)
    weight = n / (n + settings.prior_events)
    moved = t + weight * (pl.col("user_quantile") - pl.col("_q_pop"))
    return (
        history.filter(pl.col("user_id") != POPULATION_USER)
        .join(population, how="cross")
        .select(
            "user_id",
            "n",
            weight.alias("weight"),
            moved.clip(settings.min_ratio * t, settings.max_ratio * t).alias("user_threshold"),
        )
    )


@dataclass(frozen=True, eq=False)
class Decision:
    """The verdict on scored events: each event's cut, ``is_anomaly`` and the suppressing rule."""

    cuts: np.ndarray
    is_anomaly: np.ndarray
    suppressed_by: list[str | None]

    @property
    def suppressed(self) -> np.ndarray:
        return np.array([rule is not None for rule in self.suppressed_by], dtype=bool)


def decide(scores: np.ndarray, cuts: np.ndarray, user_ids: Sequence[str | None] | pl.Series,
           top_kinds: Sequence[str | None] | pl.Series, rules: Sequence[Rule]) -> Decision:
    """THE decision, for the batch shards and the API alike.

    ``is_anomaly = score >= cut`` with each event's cut (its user's when per-user
    thresholds are on, else the global threshold: ``event_cuts`` / ``user_cut_array``);
    a flagged event whose user and top reason kind match an active suppression rule
    (``uba.alerting.feedback.active_rules`` for the event's day, as ``rule_tuples``) stays
    flagged and is marked suppressed by the first such rule in write order.
    """
    scores = np.asarray(scores, dtype=np.float64)
    cuts = np.asarray(cuts, dtype=np.float64)
    flagged = scores >= cuts
    return Decision(cuts=cuts, is_anomaly=flagged, suppressed_by=suppressing_rules(user_ids, top_kinds, flagged,
                                                                                     rules))


def event_cuts(user_ids: Sequence[str], user_cuts: Mapping[str, float] | None, global_threshold: float) -> np.ndarray:
    """Each event's cut from a user -> cut mapping (None: per-user thresholds off); users
    without a cut get the global one. The API's form of ``user_cut_array``."""
    if user_cuts is None:
        return np.full(len(user_ids), float(global_threshold), dtype=np.float64)
    return np.array([user_cuts.get(u, global_threshold) for u in user_ids], dtype=np.float64)


def load_user_cuts(settings: Settings, bundle: Bundle) -> pl.DataFrame | None:
    """The per-user cuts (``user_id``, ``user_threshold``) of a bundle, or None when the option
    is off: the one place the batch run (``RunOperations.prepare``) and the API load them,
    so an online verdict and the nightly one use the same cuts."""
    if not settings.user_thresholds.enabled:
        return None
    return bundle_user_cuts(settings, bundle)


def bundle_user_cuts(settings: Settings, bundle: Bundle) -> pl.DataFrame:
    """The per-user cuts of a bundle whether or not the option is on (``evaluate`` shows
    them before anyone enables it): its score table, rebuilt if needed, moved from the
    global threshold."""
    history = load_or_build_history(settings, bundle)
    return user_thresholds(history.lazy(), bundle.detector.threshold, settings.user_thresholds).collect()


def user_cut_array(user_ids: Sequence[str] | pl.Series, thresholds: pl.DataFrame, global_threshold: float) -> np.ndarray:
    """Each event's user cut as an array aligned with ``user_ids`` (global for unknown users)."""
    ids = user_ids if isinstance(user_ids, pl.Series) else list(user_ids)
    frame = pl.DataFrame({"user_id": ids}, schema={"user_id": pl.String()})
    joined = frame.join(thresholds.select("user_id", "user_threshold"), on="user_id", how="left",
                        maintain_order="left")
    return joined["user_threshold"].fill_null(float(global_threshold)).to_numpy()


def concentration_from_counts(per_user: pl.DataFrame, alerts: str) -> Concentration:
    """``uba.monitoring.evaluation.alert_concentration`` from per-user alert counts (column ``alerts``),
    so a run can add up chunks without keeping one row per event."""
    counts = per_user.select(pl.col(alerts).fill_null(0)).to_series().sort(descending=True)
    total = int(counts.sum())
    top = max(1, int(np.ceil(per_user.height * 0.01)))
    return {
        "users": per_user.height,
        "users_with_alerts": int((counts > 0).sum()),
        "top_1pct_users": top,
        "top_1pct_share_of_alerts": float(counts.head(top).sum() / total) if total else 0.0,
        "max_alerts_one_user": int(counts.to_numpy().max(initial=0)),
        "alerts": total,
    }


# --- the per-user table of a bundle ---------------------------------------------------


def history_from_training(settings: Settings, bundle: Bundle) -> pl.DataFrame:
    """Score the bundle's own training window and summarise it per user.

    Uses the same feature function and detector as scoring, so a user's history is on
    exactly the scale of the scores it is compared with.
    """
    features = window_features(settings.paths.data_dir, training_days(bundle), settings)
    frame = features.select("user_id", *bundle.detector.feature_names).collect()
    scores = bundle.detector.anomaly_scores(feature_matrix(frame, bundle.detector.feature_names))
    scored = pl.LazyFrame({"user_id": frame["user_id"], "anomaly_score": scores})
    return score_history(scored, settings.user_thresholds.user_quantile).collect()


def load_or_build_history(settings: Settings, bundle: Bundle) -> pl.DataFrame:
    """The bundle's per-user score table, built once from the training window when missing.

    A table built for another quantile setting is rebuilt, so changing
    ``user_thresholds.user_quantile`` takes effect at the next run. So is one that the
    bundle guards refuse (a link out of the bundle directory, a FIFO or device, over the
    size cap), one that is not readable Parquet, and one without this table's columns:
    it is derived data, so like a missing one it is rebuilt from its source, with a
    warning naming the file. The rebuilt table replaces the directory entry by an
    atomic rename (a link is replaced, its target never written); if it cannot be
    stored, it is used anyway and the next run rebuilds it again.
    """
    quantile = settings.user_thresholds.user_quantile
    try:
        stored = read_user_score_history(bundle.path, quantile)
    except BundleError as exc:
        log.warning("per-user score history refused, rebuilding it from the training window: %s", exc)
        stored = None
    if stored is not None:
        if dict(stored.schema) == HISTORY_SCHEMA:
            return stored
        log.warning("per-user score history %s: columns are not %s, rebuilding it from the training window",
                    io.user_score_history_path(bundle.path, quantile), ", ".join(HISTORY_SCHEMA))
    log.info("building per-user score history for %s from its training window", bundle.version)
    history = history_from_training(settings, bundle)
    try:
        io.write_user_score_history(history, bundle.path, quantile)
    except OSError as exc:
        log.warning("per-user score history %s: cannot store the rebuilt table (%s); using it for this run only",
                    io.user_score_history_path(bundle.path, quantile), exc.strerror or type(exc).__name__)
    return history


def store_training_history(bundle_path: Path, user_ids: Sequence[str], train_scores: np.ndarray,
                           quantile: float) -> Path:
    """Save the per-user table from the scores `train` already computed (no second pass)."""
    scored = pl.LazyFrame({"user_id": pl.Series(list(user_ids), dtype=pl.String),
                           "anomaly_score": np.asarray(train_scores, dtype=np.float64)})
    return io.write_user_score_history(score_history(scored, quantile).collect(), bundle_path, quantile)
