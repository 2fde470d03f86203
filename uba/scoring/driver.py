"""``score --date D``: score one day's events and publish them all at once.

The run, in order: check the inputs exist and load the model (before touching the
output, so a typo costs nothing); take the per-date lock; heal what a crashed run may
have left; make sure the aggregates of D and its lookback exist; build the baselines
as of D; then, chunk by chunk of at most ``scoring.chunk_rows`` events, compute the
features with the shared feature module, score them (sharded on Ray, or in-process),
attach reasons and write the chunk's part into a staging directory. Only when every
chunk is written and the row counts add up are ``scores/`` and ``flagged/`` swapped into
``event_date=D`` (an atomic directory exchange each) and the manifest written last.

Any failure before the swap leaves the published output of D exactly as it was and
writes a ``failed-<ts>.json`` record next to the manifest instead.
"""

from __future__ import annotations

import math
import os
import socket
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date, timedelta
from importlib import metadata
from pathlib import Path
from typing import Any

import polars as pl

from uba import io
from uba.artifacts import Bundle, load_bundle
from uba.errors import UserError
from uba.features import baselines_as_of, ensure_aggregates
from uba.features.events import FEATURE_COLUMNS, FEATURE_SET_VERSION, event_features
from uba.logs import get_logger
from uba.operations import RunOperations
from uba.pipeline import feature_matrix
from uba.scoring import manifest as mf
from uba.scoring import outputs
from uba.scoring.lock import date_lock
from uba.scoring.ray_backend import (
    EAGER_ENGINE,
    FaultInjection,
    RayRuntime,
    RunFailedError,
    ShardWork,
    score_in_process,
)
from uba.settings import Settings

log = get_logger("scoring")

STAGING_DIR = ".staging"
PART_NAME = "part-{index:05d}.parquet"
IN_PROCESS = "in-process"


@dataclass(frozen=True)
class ScoreOptions:
    """How to run one date; None means "use the settings" (``settings.ray``)."""

    day: date
    ray_address: str | None = None
    workers: int | None = None
    shards: int | None = None
    in_process: bool = False
    model_version: str | None = None
    fault: FaultInjection | None = None


@dataclass
class _Timer:
    """Wall-clock seconds per stage, summed over chunks, for the manifest."""

    seconds: dict[str, float] = field(default_factory=dict)
    current: str = "start"

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        self.current = name
        began = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = round(self.seconds.get(name, 0.0) + time.perf_counter() - began, 6)


def resolve_ray_address(option: str | None, settings: Settings) -> str | None:
    """--ray-address, else RAY_ADDRESS, else ``ray.address`` from the settings; None = embedded."""
    return option or os.environ.get("RAY_ADDRESS") or settings.ray.address or None


def open_runtime(settings: Settings, options: ScoreOptions) -> RayRuntime:
    """A Ray runtime for one or more runs; nothing starts until a run needs Ray."""
    return RayRuntime(
        address=resolve_ray_address(options.ray_address, settings),
        workers=options.workers,
        default_workers=settings.ray.num_workers,
        object_store_memory_mb=settings.ray.object_store_memory_mb,
    )


def load_scoring_bundle(settings: Settings, version: str | None) -> Bundle:
    """The bundle to score with, refused if it was trained on other features than this code's."""
    return load_bundle(settings.paths.model_dir, version=version, expected_features=FEATURE_COLUMNS,
                       expected_feature_set_version=FEATURE_SET_VERSION)


def scan_day_events(data_dir: Path, day: date) -> pl.LazyFrame:
    """The day's events; a day whose rows were all quarantined says so instead of
    telling the operator to ingest a day that was ingested."""
    if not io.partition_files(data_dir, io.EVENTS, day):
        quarantined = io.partition_row_count(data_dir, io.QUARANTINE, day)
        if quarantined:
            raise UserError(
                f"no events partition for {day.isoformat()} under {Path(data_dir) / io.EVENTS}: all "
                f"{quarantined} ingested rows of that day were quarantined (see "
                f"{io.partition_dir(data_dir, io.QUARANTINE, day)})")
    return io.scan_events(data_dir, day)


def score_day(settings: Settings, options: ScoreOptions, runtime: RayRuntime | None = None,
              bundle: Bundle | None = None) -> dict[str, Any]:
    """Score ``options.day`` and publish it; returns the manifest that was written.

    ``runtime`` lets a caller (backfill) keep one Ray connection across many days; a
    runtime opened here is closed here. Raises UserError for bad input, RunLockedError
    when another run holds the date, RunFailedError/ShardFailedError when the run failed.
    """
    events = scan_day_events(settings.paths.data_dir, options.day)
    bundle = bundle or load_scoring_bundle(settings, options.model_version)
    own_runtime = runtime is None
    runtime = runtime or open_runtime(settings, options)
    try:
        with date_lock(settings.paths.output_dir, options.day):
            return _Run(settings, options, runtime, bundle, events).execute()
    finally:
        if own_runtime:
            runtime.close()


class _Run:
    """One attempt at one date; holds the staging directory and the run's bookkeeping."""

    def __init__(self, settings: Settings, options: ScoreOptions, runtime: RayRuntime,
                 bundle: Bundle, events: pl.LazyFrame) -> None:
        self.settings = settings
        self.options = options
        self.day = options.day
        self.runtime = runtime
        self.bundle = bundle
        self.events = events
        self.output_dir = Path(settings.paths.output_dir)
        self.data_dir = Path(settings.paths.data_dir)
        self.run_id = uuid.uuid4().hex
        self.started = time.time()
        self.timer = _Timer()
        self.record: dict[str, Any] = {}
        self.staging_root = self.output_dir / STAGING_DIR / f"event_date={self.day.isoformat()}"
        self._detector_ref: Any = None
        self.aggregates_computed: list[date] = []

    # -- the run ---------------------------------------------------------------------

    def execute(self) -> dict[str, Any]:
        try:
            self._recover_previous()
            staging = io.make_staging_dir(self.staging_root)
            self._score_into(staging)
            self._publish(staging)
        except BaseException as exc:
            self._record_failure(exc)
            raise
        finally:
            io.discard_dir(self.staging_root)
        return self.record

    def _recover_previous(self) -> None:
        """Undo an interrupted swap and drop staging left by a killed run of this date
        (safe: we hold the date's lock, so no live run owns it)."""
        with self.timer.stage("recover"):
            for dataset in (io.SCORES, io.FLAGGED, io.FLAGGED_USERS):
                if io.recover_replaced_dir(io.partition_dir(self.output_dir, dataset, self.day)):
                    log.warning("restored the previous %s output of %s after an interrupted swap",
                                dataset, self.day)
            if self.staging_root.exists():
                log.info("removing staging left by an interrupted run of %s", self.day)
                io.discard_dir(self.staging_root)

    def _score_into(self, staging: Path) -> None:
        with self.timer.stage("count"):
            input_rows = int(self.events.select(pl.len()).collect().item())
            quarantined = io.partition_row_count(self.data_dir, io.QUARANTINE, self.day)
        with self.timer.stage("aggregates"):
            lookback = self.settings.features.lookback_days
            needed = [self.day - timedelta(days=n) for n in range(lookback, -1, -1)]
            self.aggregates_computed = ensure_aggregates(self.data_dir, needed, self.settings.events)
        with self.timer.stage("baselines"):
            baselines = baselines_as_of(self.data_dir, self.day, self.settings).collect()
        with self.timer.stage("operations"):  # issue 7: per-user cuts, suppression rules
            self.ops = RunOperations.prepare(self.settings, self.bundle, self.day)
        execution = self._execution(input_rows)
        chunk_rows = self.settings.scoring.chunk_rows
        n_chunks = max(1, math.ceil(input_rows / chunk_rows))
        counts = {"scored_rows": 0, "flagged_rows": 0, "known_user_rows": 0}
        flagged_parts: list[pl.DataFrame] = []
        score_files: dict[str, Any] = {}
        for index in range(n_chunks):
            scored, flagged = self._score_chunk(index, chunk_rows, baselines, execution)
            counts["scored_rows"] += scored.height
            counts["known_user_rows"] += int(scored["known_user"].sum())
            flagged_parts.append(flagged)
            with self.timer.stage("write"):
                name = PART_NAME.format(index=index)
                score_files[name] = self._write(scored, staging / io.SCORES / name)
        with self.timer.stage("write"):
            flagged_all = pl.concat(flagged_parts, how="vertical").sort(
                outputs.FLAGGED_SORT_KEY, descending=[True, False])
            counts["flagged_rows"] = flagged_all.height
            flagged_files = {PART_NAME.format(index=0):
                             self._write(flagged_all, staging / io.FLAGGED / PART_NAME.format(index=0))}
        with self.timer.stage("user_day"):  # issue 7: whole-day alerts, published with the rest
            user_days = self.ops.user_day_alerts(baselines)
            if user_days is not None:
                self._write(user_days, staging / io.FLAGGED_USERS / PART_NAME.format(index=0))
        conservation = mf.row_conservation(input_rows, counts["scored_rows"], quarantined)
        self.record = self._manifest(input_rows, quarantined, counts, conservation, execution,
                                     baselines, score_files, flagged_files, n_chunks)
        self.record.update(self.ops.manifest_sections(user_days))  # drift, alerts, user_day
        self.ops.warn_on_drift(self.record["drift"])
        if not conservation["ok"]:
            raise RunFailedError(
                f"row conservation failed for {self.day}: {input_rows} input events but "
                f"{counts['scored_rows']} scored; nothing was published")
        with self.timer.stage("baseline_snapshot"):
            io.write_baseline_snapshot(baselines, self.data_dir, self.day)

    def _execution(self, input_rows: int) -> dict[str, Any]:
        """Decide where the model runs and describe it for the manifest."""
        shards = self.options.shards or self.settings.ray.num_shards
        base = {"shards": shards, "max_retries": self.settings.ray.max_retries,
                "chunk_rows": self.settings.scoring.chunk_rows}
        if self.options.in_process or input_rows < self.settings.ray.min_rows_for_ray:
            reason = ("--in-process requested" if self.options.in_process else
                      f"{input_rows} events < ray.min_rows_for_ray={self.settings.ray.min_rows_for_ray}")
            return {**base, "mode": IN_PROCESS, "reason": reason, "workers": 1, "address": None}
        with self.timer.stage("ray_init"):
            self.runtime.start()
            detail = self.runtime.describe()
            self._detector_ref = self.runtime.detector_ref(self.bundle.version, self.bundle.detector)
        return {**base, **detail, "reason": "default" if detail["mode"] == "local" else "address given"}

    def _score_chunk(self, index: int, chunk_rows: int, baselines: pl.DataFrame,
                     execution: dict[str, Any]) -> tuple[pl.DataFrame, pl.DataFrame]:
        detector = self.bundle.detector
        with self.timer.stage("read"):
            chunk = self.events.slice(index * chunk_rows, chunk_rows).collect()
        with self.timer.stage("features"):
            features = outputs.without_baseline_copies(
                event_features(chunk.lazy(), baselines.lazy())).collect()
            matrix = feature_matrix(features, detector.feature_names)
        with self.timer.stage("scoring"):  # scores, flags and reasons, per shard
            label = f"{self.day.isoformat()}-c{index:05d}"
            work = ShardWork(self.bundle.version, self.settings.threshold.max_reasons, self.options.fault)
            if execution["mode"] == IN_PROCESS:
                annotated = score_in_process(detector, matrix, features, execution["shards"], work, label)
            else:
                annotated = self.runtime.score(self._detector_ref, matrix, features, execution["shards"],
                                               execution["max_retries"], work, label)
        if annotated.height != features.height:
            raise RunFailedError(f"scoring returned {annotated.height} rows for {features.height} events")
        with self.timer.stage("outputs"):
            scores = annotated["anomaly_score"].to_numpy()
            annotated = self.ops.apply(annotated, matrix, scores)  # issue 7
            scored = outputs.score_rows(annotated.lazy()).collect(engine=EAGER_ENGINE)
            flagged = outputs.flagged_rows(annotated.lazy()).collect(engine=EAGER_ENGINE)
        return scored, flagged

    def _write(self, df: pl.DataFrame, path: Path) -> dict[str, Any]:
        """Write one part with fixed options (one chunk, fixed name) so bytes are reproducible."""
        io.write_parquet_atomic(df.rechunk(), path)
        return {"rows": df.height, "sha256": io.file_sha256(path)}

    def _publish(self, staging: Path) -> None:
        fault = self.options.fault
        if fault and fault.pause_before_publish_sec:
            log.warning("fault injection: pausing %.1f s before publishing", fault.pause_before_publish_sec)
            time.sleep(fault.pause_before_publish_sec)
        with self.timer.stage("publish"):
            for dataset in (io.SCORES, io.FLAGGED, io.FLAGGED_USERS):
                final = io.partition_dir(self.output_dir, dataset, self.day)
                if (staging / dataset).is_dir():  # flagged_users/ only when user-day alerts are on
                    io.replace_dir_atomic(staging / dataset, final)
                else:  # an earlier run's user-day alerts must not outlive it
                    io.discard_dir(final)
        finished = time.time()
        self.record.update(status=mf.SUCCEEDED, finished_at=mf.utc_iso(finished),
                           duration_sec=round(finished - self.started, 3),
                           timings_sec=dict(self.timer.seconds))
        io.write_json_atomic(self.record, mf.manifest_path(self.output_dir, self.day))

    # -- records ---------------------------------------------------------------------

    def _manifest(self, input_rows: int, quarantined: int, counts: dict[str, int],
                  conservation: dict[str, Any], execution: dict[str, Any], baselines: pl.DataFrame,
                  score_files: dict[str, Any], flagged_files: dict[str, Any],
                  n_chunks: int) -> dict[str, Any]:
        detector = self.bundle.detector
        return {
            **self._identity(),
            "status": "running",
            "error": None,
            "inputs": {
                "events": str(io.partition_dir(self.data_dir, io.EVENTS, self.day)),
                "baselines_as_of": self.day.isoformat(),
                "baseline_users": int(baselines.height),
                "lookback_days": self.settings.features.lookback_days,
                "aggregates_computed": [d.isoformat() for d in self.aggregates_computed],
            },
            "model": {
                "version": self.bundle.version,
                "path": str(self.bundle.path),
                "feature_set_version": FEATURE_SET_VERSION,
                "features": list(detector.feature_names),
                "threshold": float(detector.threshold),
                "threshold_percentile": float(detector.percentile),
            },
            "counts": {
                "input_rows": input_rows,
                "scored_rows": counts["scored_rows"],
                "flagged_rows": counts["flagged_rows"],
                "quarantined_rows": quarantined,
                "known_user_rows": counts["known_user_rows"],
                "unknown_user_rows": counts["scored_rows"] - counts["known_user_rows"],
            },
            "row_conservation": conservation,
            "execution": {**execution, "chunks": n_chunks},
            "outputs": {
                "scores": {"path": str(io.partition_dir(self.output_dir, io.SCORES, self.day)),
                           "files": score_files},
                "flagged": {"path": str(io.partition_dir(self.output_dir, io.FLAGGED, self.day)),
                            "files": flagged_files},
            },
        }

    def _identity(self) -> dict[str, Any]:
        return {
            "format": mf.MANIFEST_FORMAT,
            "event_date": self.day.isoformat(),
            "run_id": self.run_id,
            "started_at": mf.utc_iso(self.started),
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "uba_version": _package_version(),
        }

    def _record_failure(self, exc: BaseException) -> None:
        """Write the failed run's record beside (never over) the manifest; best effort."""
        finished = time.time()
        record = {
            **(self.record or self._identity()),
            "status": mf.FAILED,
            "error": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
            "failed_stage": self.timer.current,
            "finished_at": mf.utc_iso(finished),
            "duration_sec": round(finished - self.started, 3),
            "timings_sec": dict(self.timer.seconds),
            "published": False,
        }
        try:
            io.write_json_atomic(record, mf.failure_path(self.output_dir, self.day, finished))
        except OSError as write_error:
            log.error("could not write the failure record of %s: %s", self.day, write_error)


def _package_version() -> str:
    try:
        return metadata.version("uba")
    except metadata.PackageNotFoundError:
        return "unknown"

