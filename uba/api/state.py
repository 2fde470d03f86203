"""What the API serves with: one model bundle + one baseline snapshot, swapped atomically.

A :class:`ModelState` is immutable. Reload builds a complete new one off to the side,
checks it by scoring a probe event end to end, and only then replaces the holder's
reference in a single assignment, so a request that already picked up the old state
finishes with it and a broken bundle never becomes visible.
"""

from __future__ import annotations

import gc
import threading
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl

from uba import io
from uba.alerting.feedback import load_rules
from uba.alerting.thresholds import load_user_cuts
from uba.api.inference import ScoringEvent, score_events
from uba.api.model_state import BaselineIndex, ModelState, RulesKey, Scorer
from uba.directory import directory_path
from uba.errors import BundleError, UserError, first_line
from uba.features.baselines import POPULATION_USER
from uba.features.compiled import compile_baselines, feature_columns
from uba.features.events import FEATURE_SET_VERSION
from uba.logs import get_logger
from uba.model.bundle import Bundle, PeerContext, load_bundle, resolve_version
from uba.model.forest import import_compiled_loops
from uba.settings import Settings

log = get_logger("api.state")


def snapshot_stamp(path: Path) -> tuple[int, ...]:
    """Which file a snapshot is (inode, size, mtime): ``score --date D`` rewrites the
    snapshot as of D in place of train's, so the date alone does not tell a new one."""
    try:
        info = Path(path).stat()
    except OSError:
        return ()
    return (info.st_ino, info.st_size, info.st_mtime_ns)


def index_baselines(frame: pl.DataFrame, as_of: date, path: Path,
                    stamp: tuple[int, ...] = ()) -> BaselineIndex:
    """Validate a snapshot (one row per user, a population row) and compile it."""
    if "user_id" not in frame.columns:
        raise UserError(f"baseline snapshot {path} has no user_id column")
    ids = frame["user_id"].to_list()
    if len(set(ids)) != len(ids):
        raise UserError(f"baseline snapshot {path} has duplicate user_id rows")
    if POPULATION_USER not in ids:
        raise UserError(f"baseline snapshot {path} has no population row ({POPULATION_USER!r})")
    try:
        compiled = compile_baselines(frame)
    except ValueError as exc:
        raise UserError(f"{path}: {exc}") from exc
    return BaselineIndex(as_of=as_of, path=path, frame=frame, compiled=compiled, stamp=stamp)


def load_baselines(data_dir: Path) -> BaselineIndex:
    """The newest snapshot under ``<data-dir>/baselines``; none at all is a user error."""
    found = io.latest_baseline_snapshot(data_dir)
    if found is None:
        raise UserError(
            f"no baseline snapshot under {Path(data_dir) / 'baselines'} (run uba-batch train or score first)"
        )
    as_of, path = found
    stamp = snapshot_stamp(path)  # before the read: a rewrite meanwhile shows as a change next time
    frame = io.read_baseline_snapshot(path)
    return index_baselines(frame, as_of, path, stamp)


def build_scorer(bundle: Bundle, settings: Settings) -> tuple[Scorer, str]:
    """The compact forest, or (benchmark only) scikit-learn refitted to the same forest."""
    if settings.api.scorer == "sklearn":
        # scikit-learn is imported only for this benchmark mode, not by every API start
        from uba.api.sklearn_scorer import sklearn_scorer

        return sklearn_scorer(bundle, settings.api.sklearn_training_matrix), "sklearn"
    return bundle.detector.anomaly_scores, "compact"


def user_cut_map(bundle: Bundle, settings: Settings) -> dict[str, float] | None:
    """Per-user thresholds as ``score`` loads them (``uba.alerting.thresholds.load_user_cuts``), as a
    mapping for one-event lookups (None when the option is off)."""
    try:
        cuts = load_user_cuts(settings, bundle)
    except UserError:
        raise
    except Exception as exc:  # e.g. the training window's events are gone and no table was stored
        raise BundleError(f"model {bundle.version}: cannot load per-user thresholds: {exc}") from exc
    if cuts is None:
        return None
    return dict(zip(cuts["user_id"].to_list(), cuts["user_threshold"].to_list(), strict=True))


def rules_key(data_dir: Path) -> RulesKey:
    """The names of the suppression table's part files: append-only, so a new name is the
    only way the rules change, and a directory listing tells the periodic reloader about it.

    Every file named like a part, the parts a merged part replaces included: leaving those
    out meant reading each merged part's metadata, and one that a compaction deleted
    between the listing and that read failed the reload (start-up, /admin/reload, the
    periodic check) with a FileNotFoundError (found by an attack). A compaction changes
    the key, so the rules are reloaded, the same ones."""
    return tuple(p.name for p in io.listed_table_parts(data_dir, io.SUPPRESSIONS))


def load_suppression_rules(data_dir: Path) -> tuple[pl.DataFrame, RulesKey]:
    """Every rule event (``load_rules``, as ``score`` reads them) and the parts they came from.

    The whole log is kept, not today's active rules, because a rule's expiry is judged
    against each event's own day when a request is scored. An unreadable part refuses
    the load (the nightly job would fail on it too) rather than serving without rules.
    """
    key = rules_key(data_dir)
    try:
        return load_rules(data_dir), key
    except Exception as exc:
        raise UserError(f"cannot read suppression rules under {Path(data_dir) / io.SUPPRESSIONS}: "
                        f"{first_line(exc)[:300]}") from exc


def snapshot_peer_context(data_dir: Path, peers: bool, as_of: date, path: Path | str) -> PeerContext:
    """What the API checks a bundle's feature set against: the newest baseline snapshot,
    which has peer statistics iff a directory was stored when it was built.

    The remedy is the snapshot's, not the batch run's: a directory imported after the
    newest day was scored is not in that day's snapshot, so "import it" (the batch
    remedy) left an operator who had imported it with an API that never became ready.
    Re-scoring the day rebuilds its snapshot from the directory stored now."""
    rescore = (f"re-score {as_of} (uba-batch score --date {as_of}; a snapshot dated the day after a "
               f"training window is rebuilt by uba-batch train --end-date {as_of - timedelta(days=1)})")
    stored = directory_path(Path(data_dir)).is_file()
    without = (f"a directory is stored now, but not when this snapshot was built: {rescore} to rebuild it "
               "with peer groups, or retrain without a directory" if stored else
               f"import it (uba-batch users import FILE), then {rescore}; or retrain without one")
    with_peers = (f"retrain the model to use it, or remove the directory and {rescore}" if stored else
                  f"no directory is stored now: {rescore} to rebuild it without peer groups")
    return PeerContext(peers, f"baseline snapshot as of {as_of}, {path}", remedy_without=without,
                       remedy_with=with_peers)


def load_state(settings: Settings) -> ModelState:
    """Load the newest bundle + snapshot (+ per-user cuts, suppression rules) and prove they score a probe event."""
    # a fresh install lacks the model first: say "train a model" before "no snapshot"
    resolve_version(Path(settings.paths.model_dir), None)
    baselines = load_baselines(settings.paths.data_dir)
    # the snapshot has peer statistics iff a directory was stored when it was built
    peers = baselines.compiled.peers is not None
    bundle = load_bundle(
        settings.paths.model_dir,
        expected_features=feature_columns(peers),
        expected_feature_set_version=FEATURE_SET_VERSION,
        peers=snapshot_peer_context(settings.paths.data_dir, peers, baselines.as_of, baselines.path),
    )
    scorer, scorer_name = build_scorer(bundle, settings)
    rules, key = load_suppression_rules(settings.paths.data_dir)
    state = ModelState(bundle=bundle, baselines=baselines, scorer=scorer, scorer_name=scorer_name,
                       loaded_at=datetime.now(UTC), user_cuts=user_cut_map(bundle, settings),
                       rules=rules, rules_key=key)
    _probe(state, settings)
    # /predict/batch, and /predict requests coalesced into one group, search a batch of 64
    # rows or more for twins: that loop loads (or, without numba's cache, compiles for
    # about 4 s) here, at load, rather than inside the first such request
    import_compiled_loops()
    return state


def _probe(state: ModelState, settings: Settings) -> None:
    """Score one synthetic event through the real request path before the state goes live."""
    probe = ScoringEvent(
        event_id="probe", user_id="uba-api-probe", timestamp=None,
        event_type=settings.events.event_types[0], session_duration_sec=60.0, events_in_session=1,
        device_type=settings.events.device_types[0], hour_of_day=12, day_of_week=2, session_id=None,
    )
    try:
        result = score_events(state, [probe], settings.threshold.max_reasons)
    except Exception as exc:  # any failure here means the pair cannot serve
        raise BundleError(f"model {state.version} cannot score with baselines as of "
                          f"{state.baselines.as_of}: {exc}") from exc
    if not np.isfinite(result.scores).all():
        raise BundleError(f"model {state.version} gives a non-finite score for a probe event")


def settle_heap(full: bool = True) -> None:
    """Collect, then move every object alive now out of the cyclic collector's reach.

    The bundle, the compiled snapshot and the imported libraries are hundreds of
    thousands of objects that live as long as the process; every full (generation 2)
    collection walked them all, 57-104 ms with the event loop stopped, which was the whole
    p99 of ``/predict`` at 16 connections (~72 ms against a p90 of ~6 ms). Frozen, a full
    collection only walks what requests create.

    ``full`` at start-up. After a reload only the young generations are collected
    (milliseconds): a full pass over the unfrozen heap took 0.3 s with the loop stopped,
    and is not needed, because a previous model state holds no reference cycles and
    is freed by reference counting when its last request ends, frozen or not (tested).
    """
    if full:
        gc.unfreeze()
        gc.collect()
    else:
        gc.collect(1)
    gc.freeze()


class ModelHolder:
    """The one mutable reference: the state being served, or why there is none."""

    def __init__(self) -> None:
        self.current: ModelState | None = None
        self.problem: str | None = "not loaded yet"
        self._reload_lock = threading.Lock()

    def load_initial(self, settings: Settings) -> None:
        """Startup load: a missing or broken model leaves the app running but not ready."""
        try:
            self.current = load_state(settings)
            self.problem = None
            log.info("serving model %s with baselines as of %s",
                     self.current.version, self.current.baselines.as_of)
        except UserError as exc:
            self.problem = str(exc)
            log.warning("starting without a model: %s", exc)

    def reload(self, settings: Settings) -> tuple[ModelState | None, ModelState]:
        """Load the newest pair and swap it in; on failure the old state stays and this raises."""
        with self._reload_lock:
            previous = self.current
            fresh = load_state(settings)
            self.current = fresh  # the atomic swap: one reference assignment
            self.problem = None
            return previous, fresh
