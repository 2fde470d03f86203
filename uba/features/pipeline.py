"""Feature frames for whole days, shared by `train`, `score` and `evaluate`.

One place decides how a day's events meet their baselines, so training, batch scoring
and evaluation can never drift apart: events of day D are joined with the baselines
rolled up from the aggregates strictly before D.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt
import polars as pl

from uba import io
from uba.errors import UserError
from uba.features import ensure_aggregates, protected_baselines_as_of
from uba.features.compiled import feature_columns
from uba.features.events import FEATURE_COLUMNS, FEATURE_SET_VERSION, event_features
from uba.features.store import directory_context, lookback_days
from uba.model.bundle import Bundle, load_bundle

if TYPE_CHECKING:
    from uba.settings import Settings


def date_range(start: date, end: date) -> list[date]:
    """Inclusive list of dates; an inverted range is a user error, not an empty result."""
    if end < start:
        raise UserError(f"end date {end} is before start date {start}")
    return [start + timedelta(days=i) for i in range((end - start).days + 1)]


def training_days(bundle: Bundle) -> list[date]:
    """The days a bundle was trained on, from its metadata: what `evaluate` must stay out
    of and what the per-user score table is rebuilt from."""
    window = bundle.metadata["training_window"]
    return date_range(date.fromisoformat(window["start"]), date.fromisoformat(window["end"]))


def prepare_aggregates(data_dir: Path, days: Sequence[date], settings: Settings) -> None:
    """Make sure every aggregate partition needed to score ``days`` exists (computed once per day)."""
    needed: set[date] = set(days)
    for day in days:
        needed.update(lookback_days(day, settings.features.lookback_days))
    ensure_aggregates(data_dir, sorted(needed), settings)


def day_features(data_dir: Path, day: date, settings: Settings) -> pl.LazyFrame:
    """Features of one day's events against baselines as of that day (aggregates must exist),
    protected from the alerts published under ``settings.paths.output_dir`` as ``score`` is."""
    events = io.scan_events(data_dir, day)
    baselines = protected_baselines_as_of(data_dir, day, settings, settings.paths.output_dir)
    return event_features(events, baselines)


def window_features(data_dir: Path, days: Sequence[date], settings: Settings) -> pl.LazyFrame:
    """Features of several days; days without an events partition are skipped, none at all is an error."""
    present = [d for d in days if io.partition_files(data_dir, io.EVENTS, d)]
    if not present:
        first, last = min(days), max(days)
        raise UserError(f"no events partitions between {first} and {last} under {Path(data_dir) / io.EVENTS}")
    prepare_aggregates(data_dir, present, settings)
    return pl.concat([day_features(data_dir, d, settings) for d in present], how="vertical")


def feature_matrix(features: pl.DataFrame,
                   feature_names: Sequence[str] = FEATURE_COLUMNS) -> npt.NDArray[np.float64]:
    """The model's input, columns in the bundle's order, as a contiguous float64 array."""
    missing = [c for c in feature_names if c not in features.columns]
    if missing:
        raise UserError(f"feature frame lacks columns {missing}")
    return np.ascontiguousarray(features.select(list(feature_names)).to_numpy(), dtype=np.float64)


def feature_major(features: pl.DataFrame,
                  feature_names: Sequence[str] = FEATURE_COLUMNS) -> npt.NDArray[np.float64]:
    """The model's input as one contiguous row per feature (features x events).

    Its transpose is the same matrix as ``feature_matrix``'s, without Polars' row-major
    copy; the scaler and the drift bins then read each feature as one contiguous run."""
    missing = [c for c in feature_names if c not in features.columns]
    if missing:
        raise UserError(f"feature frame lacks columns {missing}")
    return np.stack([features[name].cast(pl.Float64).to_numpy() for name in feature_names])


def load_scoring_bundle(settings: Settings, version: str | None) -> Bundle:
    """The bundle to score with, refused if it was trained on other features than this
    code's, or with a user directory where there is none here (or the reverse)."""
    peers = directory_context(settings.paths.data_dir)
    return load_bundle(settings.paths.model_dir, version=version,
                       expected_features=feature_columns(peers.present),
                       expected_feature_set_version=FEATURE_SET_VERSION, peers=peers)
