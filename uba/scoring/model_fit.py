"""How well the bundle fits the day it scores, said before the run and kept in its manifest.

Two ways a bundle can score a day differently from what its threshold promises, neither
an error (an operator may mean either), both silent before they were found by attacks:

* **The day is in its training window.** The forest was fitted on that day's events, so
  they score lower and alert less than on a day it never saw (in-sample). After the
  weekly retrain, re-scoring last week (a ``backfill`` clearing stale entity risk, a
  re-run of a failed day) with the new model halved those days' alerts without a word.
* **The feature settings differ from training.** ``features.*`` (the lookback, the
  priors, the spreads' floors, the peer groups) shape the baselines every feature is
  measured against; changed in the config after training, the same events get other
  features than the ones the forest and its threshold were fitted on.

Each is one warning line before the run and a key of the manifest's ``model`` section.
"""

from __future__ import annotations

from datetime import date
from pathlib import Path

from uba import manifest as mf
from uba.errors import UserError
from uba.logs import get_logger
from uba.manifest import ModelFit, ModelWindow
from uba.model.bundle import Bundle
from uba.schema import JsonValue
from uba.settings import Settings

log = get_logger("scoring")

PEER_SETTINGS = frozenset({"peer_group_by", "peer_min_users"})  # used only by a model with peer features


def training_window(bundle: Bundle) -> ModelWindow | None:
    """The days ``bundle`` was fitted on, as its metadata records them (None if it does not)."""
    window = bundle.metadata.get("training_window")
    if not window:
        return None
    return {"start": window["start"], "end": window["end"]}


def in_training_window(bundle: Bundle, day: date) -> bool:
    """Whether ``day`` is one of the days ``bundle`` was fitted on: a day of its window that
    had events at training (a day of the window without any, whose events came later, was
    never seen); for a bundle from before that list, any day of the window."""
    window = training_window(bundle)
    if window is None or not date.fromisoformat(window["start"]) <= day <= date.fromisoformat(window["end"]):
        return False
    seen = bundle.metadata.get("training_window", {}).get("days")
    return seen is None or day.isoformat() in seen


def feature_settings_changes(bundle: Bundle, settings: Settings) -> dict[str, list[JsonValue]]:
    """The ``features`` settings that differ from those the bundle was trained with:
    setting -> [at training, now]. The peer settings count only for a model with peer
    features; a bundle that recorded no settings has none to differ."""
    recorded = bundle.metadata.get("settings", {}).get("features")
    if not isinstance(recorded, dict):
        return {}
    now: dict[str, JsonValue] = settings.features.model_dump(mode="json")
    peers = bool(bundle.metadata.get("peer_features"))
    return {key: [recorded[key], now[key]] for key in sorted(recorded)
            if key in now and recorded[key] != now[key] and (peers or key not in PEER_SETTINGS)}


def model_fit_record(bundle: Bundle, day: date, settings: Settings) -> ModelFit:
    """The manifest's ``model`` keys of this module: the training window, whether the day
    is in it, and the feature settings changed since training (only when some are)."""
    record: ModelFit = {"in_training_window": in_training_window(bundle, day)}
    window = training_window(bundle)
    if window is not None:
        record["training_window"] = window
    changes = feature_settings_changes(bundle, settings)
    if changes:
        record["feature_settings_changed"] = changes
    return record


def warn_on_model_fit(settings: Settings, bundle: Bundle, day: date) -> None:
    """One warning line for each way ``bundle`` does not fit ``day`` (see the module doc)."""
    if in_training_window(bundle, day):
        _warn_in_sample(Path(settings.paths.output_dir), bundle, day)
    changes = feature_settings_changes(bundle, settings)
    if changes:
        listed = ", ".join(f"features.{key} {old} -> {new}" for key, (old, new) in changes.items())
        log.warning("the features settings differ from those model %s was trained with (%s): the events "
                    "of %s get other features than the ones its forest and threshold were fitted on; retrain with "
                    "these settings, or restore them", bundle.version, listed, day)


def _warn_in_sample(output_dir: Path, bundle: Bundle, day: date) -> None:
    """The in-sample line, naming the model that scored the day before when that one had
    not seen it (``--model-version`` scores the day as it did)."""
    window = training_window(bundle)
    assert window is not None  # in_training_window said so
    hint = "to score it out of sample, use a model trained before it (--model-version)"
    try:
        published = mf.read_manifest(output_dir, day)
    except UserError:
        published = None
    model = published.get("model") if published else None
    before = model.get("version") if model else None
    if model and before and before != bundle.version and not model.get("in_training_window", False):
        hint = f"it is published as scored by model {before}; --model-version {before} scores it as that model did"
    log.warning("%s lies inside the training window %s..%s of model %s: the model was fitted on this day's "
                "events, so they score lower and alert less than on a day it never saw (in-sample); %s",
                day, window["start"], window["end"], bundle.version, hint)
