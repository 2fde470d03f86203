"""`train`: features over a window of days -> scaler + forest -> calibrated threshold -> bundle.

The threshold is a percentile of the training scores (not the forest's own
contamination cut) so operators tune the alert rate in one obvious place, and it is
stored in the bundle so every scorer (batch, API) applies the same cut.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import TypedDict

import numpy as np
import numpy.typing as npt
import polars as pl

from uba import io
from uba.alerting.feedback import confirmed_malicious_ids
from uba.alerting.thresholds import store_training_history
from uba.dates import day_ranges
from uba.errors import UserError
from uba.features import snapshot_baselines
from uba.features.compiled import PEER_FEATURE_COLUMNS, feature_columns
from uba.features.events import FEATURE_SET_VERSION
from uba.features.pipeline import date_range, feature_matrix, prepare_aggregates, window_features
from uba.logs import get_logger
from uba.model.bundle import (
    DriftReference,
    TrainingMetadata,
    WeekdayReference,
    feature_reference,
    save_bundle,
    score_summary,
)
from uba.model.forest import fit_detector
from uba.monitoring.drift import (
    TrainingRows,
    build_drift_reference,
    cross_fitted_scores,
    weekday_references,
)
from uba.schema import ID_PREFIX, alert_ids
from uba.settings import Settings

log = get_logger("train")


@dataclass(frozen=True)
class TrainResult:
    """What a training run produced, for the CLI to report."""

    version: str
    bundle_path: Path
    rows: int
    threshold: float
    percentile: float
    window_start: date
    window_end: date
    excluded_malicious: int
    snapshot_path: Path
    days_with_data: int = 0
    gap_warning: str | None = None  # the window's days without events, when there are any


def data_fingerprint(data_dir: Path, days: list[date]) -> str:
    """Hash of the event parts (names and sizes) the model learned from, to tie a bundle to its data."""
    digest = hashlib.sha256()
    for day in days:
        for part in io.partition_files(data_dir, io.EVENTS, day):
            digest.update(f"{day}/{part.name}:{part.stat().st_size}\n".encode())
    return digest.hexdigest()


def check_window_coverage(days: Sequence[date], present: Sequence[date], min_days: int) -> str | None:
    """Refuse a window with events on fewer than ``min_days`` days; the warning for one with gaps.

    A window ending the day after the data starts trained on those two days, printed the
    whole window and replaced LATEST without a word. On so few days every baseline is
    still the population's (a user's own history outweighs the prior only after about
    ``features.prior_strength_days``), the threshold is a percentile of cold-start scores,
    and not every weekday is seen: a week is the least a model of "usual" can stand on.
    Days without events in a longer window add nothing, which is worth a line."""
    window = f"training window {days[0]}..{days[-1]} ({len(days)} day{'s' if len(days) != 1 else ''})"
    if not present:
        raise UserError(f"{window} has no events: nothing to train on (ingest or generate events for these days, "
                        "or move --end-date)")
    if len(present) < min_days:
        raise UserError(f"{window} has events on only {len(present)} day{'s' if len(present) != 1 else ''} "
                        f"({day_ranges(present)}); train needs at least {min_days} (train.min_days), or the "
                        "baselines and threshold are learned from users' first days: move --end-date or widen "
                        f"--window-days, or pass --min-days {len(present)} to train on these days anyway")
    missing = sorted(set(days) - set(present))
    if not missing:
        return None
    return (f"{window} has events on {len(present)} of its days; none on {day_ranges(missing)} "
            "(those days add nothing to the model)")


def _sample_rows(features: pl.DataFrame, limit: int, seed: int) -> pl.DataFrame:
    """Cap the training set deterministically; the forest sub-samples anyway, so this loses little."""
    if features.height <= limit:
        return features
    log.info("sampling %d of %d training rows (train.max_training_rows)", limit, features.height)
    return features.sort("event_id").sample(n=limit, seed=seed, shuffle=False)


def _drop_confirmed_malicious(features: pl.DataFrame, malicious_ids: set[str]) -> tuple[pl.DataFrame, int]:
    """Events named by ``malicious_ids`` either by their own id or by their event alert's id
    (an alert id cannot be turned back into its event id, so the window's event ids are
    hashed, about 1.3 us each, and only when some verdict was given by alert id)."""
    if not malicious_ids:
        return features, 0
    dropped = pl.col("event_id").is_in(list(malicious_ids))
    by_alert = [i for i in malicious_ids if i.startswith(ID_PREFIX)]
    if by_alert:
        event_alert_ids = pl.Series(alert_ids("event", features["event_id"].to_list()))
        dropped = dropped | pl.lit(event_alert_ids).is_in(by_alert)
    kept = features.filter(~dropped)
    return kept, features.height - kept.height


def _model_dir_ready(model_dir: Path, create: bool) -> None:
    """Check (``create=False``) or make the model directory; a problem is one line.

    Checked before the window is read, created only when a bundle is about to be saved:
    a train refused for too few days on a fresh --model-dir left an empty folder behind."""
    try:
        if create:
            io.ensure_dir(model_dir)
        else:
            io.check_dir_creatable(model_dir)
    except OSError as exc:
        raise UserError(f"cannot create the model directory {model_dir}: {exc.strerror or exc}") from exc


def train_model(
    settings: Settings,
    end_date: date,
    window_days: int | None = None,
    malicious_ids: set[str] | None = None,
    exclude_malicious: bool = False,
    min_days: int | None = None,
) -> TrainResult:
    """Train on the ``window_days`` days ending at ``end_date`` (inclusive) and save a bundle.

    ``exclude_malicious`` adds the events analysts confirmed malicious (the feedback
    store) to ``malicious_ids``, so confirmed attacks never become part of "normal".
    A window with events on fewer than ``min_days`` days (default ``train.min_days``) is
    refused before anything is read (``check_window_coverage``).
    """
    data_dir, model_dir = settings.paths.data_dir, settings.paths.model_dir
    if exclude_malicious:
        malicious_ids = (malicious_ids or set()) | confirmed_malicious_ids(data_dir)
    _model_dir_ready(model_dir, create=False)  # a mistyped --model-dir fails before minutes of training
    window = window_days or settings.train.window_days
    if end_date == date.max:  # the baseline snapshot is dated the day after the window
        raise UserError(f"--end-date {end_date} is the last representable date: the baseline snapshot for the "
                        "next day cannot be dated; train on a window that ends earlier")
    # a window reaching before 0001-01-01 is clipped there (fewer days of data)
    days = date_range(end_date - timedelta(days=min(window - 1, (end_date - date.min).days)), end_date)
    present = sorted({d for d in days if io.partition_files(data_dir, io.EVENTS, d)})
    gap_warning = check_window_coverage(days, present, min_days or settings.train.min_days)
    features = window_features(data_dir, days, settings).collect()
    features, excluded = _drop_confirmed_malicious(features, malicious_ids or set())
    features = _sample_rows(features, settings.train.max_training_rows, settings.model.random_state)
    if features.height < 100:
        raise UserError(f"only {features.height} training events between {days[0]} and {days[-1]}; need at least 100")
    # the directory present at training fixes the feature set (scoring refuses a mismatch)
    peers = all(c in features.columns for c in PEER_FEATURE_COLUMNS)
    names = feature_columns(peers)
    matrix = feature_matrix(features, names)
    detector, train_scores = fit_detector(
        matrix, names, settings.model, settings.threshold.percentile
    )
    metadata: TrainingMetadata = {
        "feature_set_version": FEATURE_SET_VERSION,
        "peer_features": peers,
        "training_window": {"start": days[0].isoformat(), "end": days[-1].isoformat(),
                            "days_with_data": len(present), "days": [d.isoformat() for d in present]},
        "rows": {"training": int(features.height), "users": int(features["user_id"].n_unique()),
                 "excluded_confirmed_malicious": excluded},
        "score_summary": score_summary(train_scores),
        "feature_reference": feature_reference(matrix, names),
        "data_fingerprint": data_fingerprint(data_dir, present),
        "settings": {"model": settings.model.model_dump(mode="json"),
                     "features": settings.features.model_dump(mode="json"),
                     "threshold_percentile": settings.threshold.percentile},
    }
    # per-weekday drift references, checksummed with the bundle
    drift = training_metadata(settings, features, matrix, train_scores, names)
    metadata["drift_reference_by_weekday"] = drift["drift_reference_by_weekday"]
    metadata["drift_reference"] = drift["drift_reference"]
    _model_dir_ready(model_dir, create=True)  # only now: a refused train leaves no empty model dir
    version = save_bundle(model_dir, detector, metadata)
    # per-user score table for per-user thresholds, from these scores
    after_training(settings, Path(model_dir) / version, features, train_scores)
    snapshot = write_snapshot_after(settings, end_date)
    log.info("trained %s on %d events (%s..%s), threshold %.6f at p%.1f",
             version, features.height, days[0], days[-1], detector.threshold, detector.percentile)
    return TrainResult(version=version, bundle_path=Path(model_dir) / version, rows=int(features.height),
                       threshold=float(detector.threshold), percentile=float(detector.percentile),
                       window_start=days[0], window_end=days[-1], excluded_malicious=excluded,
                       snapshot_path=snapshot, days_with_data=len(present), gap_warning=gap_warning)


def write_snapshot_after(settings: Settings, end_date: date) -> Path:
    """Baselines as of the day after training, so the API can score 'tomorrow' at once."""
    as_of = end_date + timedelta(days=1)
    prepare_aggregates(settings.paths.data_dir, [as_of], settings)
    return snapshot_baselines(settings.paths.data_dir, as_of, settings, settings.paths.output_dir)[1]


# --- what a trained bundle carries beside the forest ---------------------------------


class DriftReferences(TypedDict):
    """The drift references a bundle carries (keys WEEKDAY_REFERENCE_KEY and
    DRIFT_REFERENCE_KEY of ``uba.monitoring.drift``; shapes in ``uba.model.bundle``)."""

    drift_reference_by_weekday: dict[str, WeekdayReference]
    drift_reference: DriftReference


def training_metadata(settings: Settings, features: pl.DataFrame, matrix: npt.NDArray[np.float64],
                      train_scores: npt.NDArray[np.float64], feature_names: Sequence[str]) -> DriftReferences:
    """Extra bundle metadata (checksummed with the bundle): the drift references."""
    days = features["timestamp"].dt.date()
    percentile = settings.threshold.percentile
    rows = TrainingRows(days=days.to_numpy().astype("datetime64[D]"), users=features["user_id"].to_numpy(),
                        history_days=features["bl_history_days"].fill_null(0).to_numpy())
    scores, kind = cross_fitted_scores(matrix, rows.days, feature_names, settings.model, percentile)
    threshold = float(np.percentile(train_scores, percentile))
    return {"drift_reference_by_weekday": weekday_references(
                matrix, train_scores, days.to_list(), feature_names, settings.monitoring.min_rows,
                settings.monitoring.weekday_reference_min_days),
            "drift_reference": build_drift_reference(matrix, scores, kind, rows, threshold, feature_names,
                                                     settings.monitoring)}


def after_training(settings: Settings, bundle_path: Path, features: pl.DataFrame,
                   train_scores: npt.NDArray[np.float64]) -> None:
    """Store the per-user score table from the training scores, so the first score run
    with per-user thresholds does not have to recompute the training window."""
    store_training_history(bundle_path, features["user_id"].to_list(), train_scores,
                           settings.user_thresholds.user_quantile)
