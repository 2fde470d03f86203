"""``score --date D``: score one day's events and publish them all at once.

The driver plans and publishes; the shards do the per-row work. In order: check the
inputs exist and load the model (before touching the output, so a typo costs nothing);
take the per-date lock; heal what a crashed run may have left; plan shards of at most
``scoring.chunk_rows`` events from the Parquet footers of D's events (``plan``); make
sure the lookback's aggregates exist and build the baselines as of D (small: one row
per user); start D's own aggregates as a task of their own; run every shard
(``shard.run_shard``: read, features, score, decide, explain, write its own part into
the run's staging folder ``.staging/event_date=D/run-<run id>/``) on Ray or in this
process; add up the shards' counts and partial results; merge their flagged rows into
one sorted part; user-day alerts from D's aggregates. Only when every shard is written
and the row counts add up does the staging folder, with the manifest, become a version of
D under ``.days/event_date=D/``, published for ``scores/``, ``flagged/``,
``flagged_users/`` and the manifest at once by one atomic step (``io.commit_day_version``).
The driver never holds the day's rows, so its memory does not grow with the day.

Any failure before the swap leaves the published output of D exactly as it was and
writes a ``failed-<ts>.json`` record next to the manifest instead.
"""

from __future__ import annotations

import os
import signal
import socket
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date
from importlib import metadata
from pathlib import Path
from typing import Any, cast

import polars as pl

from uba import io
from uba import manifest as mf
from uba.alerting.risk import RiskRun
from uba.directory import (
    DirectorySnapshot,
    directory_coverage,
    directory_path,
    read_directory_snapshot,
)
from uba.errors import UserError
from uba.features import baselines_as_of, ensure_aggregates, unlearned_as_of
from uba.features.baselines import POPULATION_USER
from uba.features.events import FEATURE_SET_VERSION
from uba.features.pipeline import load_scoring_bundle
from uba.features.store import directory_context, lookback_days, stale_aggregate_days
from uba.locks import date_lock
from uba.logs import get_logger
from uba.manifest import (
    BaselineProtection,
    DirectoryCoverage,
    FailureRecord,
    PartRecord,
    RowConservation,
    RunCounts,
    RunExecution,
    RunIdentity,
    RunInputs,
    RunManifest,
    RunPlacement,
    RunRecord,
)
from uba.model.bundle import Bundle, check_bundle_peers
from uba.scoring import shard
from uba.scoring.context import CategoryNames, FaultInjection, ShardContext
from uba.scoring.hooks import RunOperations
from uba.scoring.model_fit import model_fit_record, warn_on_model_fit
from uba.scoring.plan import ShardSpec, plan_shards
from uba.scoring.ray_backend import RayRuntime, RunFailedError
from uba.settings import Settings

log = get_logger("scoring")

STAGING_DIR = ".staging"
PART_NAME = "part-{index:05d}.parquet"
IN_PROCESS = "in-process"
RISK_FLAGGED_SCHEMA: dict[str, pl.DataType] = {
    "event_id": pl.String(), "user_id": pl.String(), "anomaly_score": pl.Float64(), "threshold": pl.Float64(),
    "is_anomaly": pl.Boolean(), "suppressed": pl.Boolean(), "reason_kinds": pl.List(pl.String()),
}
RISK_FLAGGED_COLUMNS = (*RISK_FLAGGED_SCHEMA, "user_threshold")


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
    def stage(self, name: str, beside: bool = False) -> Iterator[None]:
        """Time a stage; ``beside`` (a stage in a thread next to another) leaves ``current``,
        which names the stage a failure happened in, to the main thread."""
        if not beside:
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
              bundle: Bundle | None = None) -> RunManifest:
    """Score ``options.day`` and publish it; returns the manifest that was written.

    ``runtime`` lets a caller (backfill) keep one Ray connection across many days; a
    runtime opened here is closed here. Raises UserError for bad input, RunLockedError
    when another run holds the date, RunFailedError/ShardFailedError when the run failed.
    """
    events = scan_day_events(settings.paths.data_dir, options.day)
    bundle = bundle or load_scoring_bundle(settings, options.model_version)
    warn_on_model_fit(settings, bundle, options.day)
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
        self.record: RunRecord | None = None  # built once the shards are scored; published with the outputs
        self.staging_root = self.output_dir / STAGING_DIR / f"event_date={self.day.isoformat()}"
        self.aggregates_computed: list[date] = []
        self.unverified: list[str] = []
        self.unlearned: pl.DataFrame | None = None
        self.directory: DirectoryCoverage | None = None
        self.directory_snapshot = DirectorySnapshot(table=None, sha256=None)
        self.events_fingerprint = ""
        self.lookback_events: dict[str, str] = {}

    # -- the run ---------------------------------------------------------------------

    def execute(self) -> RunManifest:
        try:
            self._recover_previous()
            staging = self.staging_root / f"run-{self.run_id}"
            io.new_dir(staging, parents=True)
            record = self._score_into(staging)
            manifest = self._publish(staging, record)
        except BaseException as exc:
            failure = self._one_line_failure(exc)
            recorded = self._record_failure(failure or exc)
            if failure is None:
                raise
            if not recorded:
                failure = type(failure)(f"{failure}; the failure record could not be written either")
            raise failure from exc
        finally:
            io.discard_dir(self.staging_root)
        return manifest

    def _one_line_failure(self, exc: BaseException) -> UserError | None:
        """The error to report for a failure that is not a bug, as one line; None otherwise.

        A full disk (or any other failed file operation, from Python, Polars or Arrow) and
        a corrupt stored part found by a shard on Ray (Ray wraps it) become one line naming
        the file; nothing was published, so the previous output of the day is intact.
        """
        cause: BaseException | None = exc
        while cause is not None:  # a corrupt part reported by a Ray task: its own message
            if isinstance(cause, io.CorruptPartError):
                if cause is exc:
                    return None
                original = getattr(cause, "cause", None)
                return io.CorruptPartError(str(original if isinstance(original, io.CorruptPartError)
                                               else cause).strip().splitlines()[-1])
            cause = cause.__cause__
        if isinstance(exc, UserError):
            return None
        reason = io.os_error_reason(exc)
        if reason is None:
            return None
        if self._previous_output_intact():
            after = f"nothing was published, the previous output of {self.day} is intact"
        else:
            after = (f"the output of {self.day} is not intact (a link of the day names a missing file or the "
                     f"run's version): check {io.partition_dir(self.output_dir, io.SCORES, self.day)} and the "
                     "links beside it, or restore them from a backup")
        return RunFailedError(f"cannot score {self.day}: {reason} (stage {self.timer.current}); {after}")

    def _previous_output_intact(self) -> bool:
        """What the "intact" claim of a failure rests on: the run's version was not
        published, and every link of the day still resolves."""
        try:
            return (io.published_version(self.output_dir, self.day) != self.run_id
                    and not io.dangling_day_links(self.output_dir, self.day))
        except OSError:
            return False

    def _recover_previous(self) -> None:
        """Heal what a killed run of this date left (safe: we hold the date's lock, so no
        live run owns any of it): an interrupted swap of the layout before versions is
        undone, versions that were never committed (or are older than the one the
        published version replaced) and leftover staging are deleted."""
        with self.timer.stage("recover"):
            io.check_day_layout(self.output_dir, self.day)  # a link made by hand: refused, nothing touched
            for dataset in io.DAY_DATASETS:
                if io.recover_replaced_dir(io.partition_dir(self.output_dir, dataset, self.day)):
                    log.warning("restored the previous %s output of %s after an interrupted swap",
                                dataset, self.day)
            removed = io.prune_day_versions(self.output_dir, self.day)
            if removed:
                log.info("removed %d unpublished or old version(s) of %s", len(removed), self.day)
            if self.staging_root.exists():
                log.info("removing staging left by an interrupted run of %s", self.day)
                io.discard_dir(self.staging_root)

    def _score_into(self, staging: Path) -> RunRecord:
        with self.timer.stage("plan"):
            files = io.partition_files(self.data_dir, io.EVENTS, self.day)
            self.events_fingerprint = io.parts_fingerprint(files)  # what a later look compares (late events)
            specs = plan_shards(files, self.settings.scoring.chunk_rows)
            self._refuse_repeated_ids_if_unverified(files)
            input_rows = sum(spec.rows for spec in specs)
            quarantined = io.partition_row_count(self.data_dir, io.QUARANTINE, self.day)
        execution = self._execution(input_rows, len(specs))
        day_aggregates = self._aggregates(execution)
        if self._on_ray(execution):
            # after the day's aggregates task, so it is not queued behind the warm-ups: the
            # user-day alerts, computed beside the shards, wait for it
            self.runtime.warm_up()
        with self.timer.stage("baselines"):
            self._read_directory()
            # baseline poisoning protection: the lookback's user-days with alerts are not learned
            # (uba.features.protection)
            self.unlearned = unlearned_as_of(self.output_dir, self.data_dir, self.day, self.settings)
            baselines = baselines_as_of(self.data_dir, self.day, self.settings, self.unlearned,
                                        self.directory_snapshot).collect()
            self._note_unverified_inputs()
            self._note_directory_coverage(baselines)
        with self.timer.stage("operations"):  # per-user cuts, suppression rules
            self.ops = RunOperations.prepare(self.settings, self.bundle, self.day)
        for folder in (shard.SCORES_DIR, shard.FLAGGED_PARTS_DIR):
            io.new_dir(staging / folder)
        ctx = ShardContext(run_key=self.run_id, day=self.day, model_version=self.bundle.version,
                                 max_reasons=self.settings.threshold.max_reasons,
                                 staging=str(staging), fault=self.options.fault)
        inputs = shard.ShardInputs(detector=self.bundle.detector, baselines=baselines,
                                   cuts=self.ops.cuts, rules=self.ops.rules,
                                   drift_reference=self.ops.reference)
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="uba-user-day") as beside:
            user_day_job = beside.submit(self._user_day_alerts, staging, baselines, day_aggregates)
            with self.timer.stage("shards"):
                results = self._run_shards(specs, ctx, inputs, execution)
        self.timer.current = "user_day"  # a failure of the thread's work is reported as this stage
        user_days = user_day_job.result()
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="uba-snapshot") as encoder:
            # the snapshot's encoding (~0.1 s of zstd) overlaps merging the flagged rows and
            # the risk instead of following them; it is written only once the run succeeded
            snapshot = encoder.submit(io.parquet_bytes, baselines)
            record = self._stage_outputs(staging, results, user_days, execution, len(specs),
                                         (input_rows, quarantined), baselines)
            with self.timer.stage("baseline_snapshot"):
                io.write_baseline_snapshot(snapshot.result(), self.data_dir, self.day)
        io.discard_dir(staging / shard.FLAGGED_PARTS_DIR)
        return record

    def _stage_outputs(self, staging: Path, results: list[shard.ShardResult], user_days: pl.DataFrame | None,
                       execution: RunPlacement, chunks: int, rows: tuple[int, int],
                       baselines: pl.DataFrame) -> RunRecord:
        """Merge the shards' flagged rows and counts, stage the entity risk and build the
        run's record; a run whose rows do not add up (``rows``: input, quarantined) fails here."""
        input_rows, quarantined = rows
        counts = self._merge_results(results)
        with self.timer.stage("merge_flagged"):
            flagged_files = self._merge_flagged(results, staging, execution)
        with self.timer.stage("risk"):  # entity risk, published with the rest
            self.risk = self._risk(staging, user_days)
        conservation = mf.row_conservation(input_rows, counts["scored_rows"], quarantined)
        score_files = {name: file for r in results for name, file in r.scores_file.items()}
        # the shards' lines, as ShardResult.record writes them (a plain dict of ShardRecord's keys)
        run_execution: RunExecution = {**execution, "shard_records": [r.record() for r in results],
                                       "chunks": chunks}
        record = self._manifest(input_rows, quarantined, counts, conservation, run_execution,
                                baselines, score_files, flagged_files)
        self.record = record
        sections = self.ops.manifest_sections(user_days)
        record["drift"] = sections["drift"]
        record["alerts"] = sections["alerts"]
        record["user_day"] = sections["user_day"]
        # RiskRun.manifest_section (uba.alerting.risk) returns RiskSection's keys as a plain dict
        record["risk"] = self.risk.manifest_section(self.settings.risk)
        record["outputs"]["risk"] = {"path": str(io.partition_dir(self.output_dir, io.RISK, self.day))}
        self.ops.warn_on_drift(record["drift"])
        if not conservation["ok"]:
            raise RunFailedError(
                f"row conservation failed for {self.day}: {input_rows} input events but "
                f"{counts['scored_rows']} scored; nothing was published")
        return record

    def _user_day_alerts(self, staging: Path, baselines: pl.DataFrame, day_aggregates: Any) -> pl.DataFrame | None:
        """The day's user-day alerts, staged with the rest. They read only the day's
        aggregates and the baselines, never the shards' output, so the driver computes
        them in a thread while the shards run: on Ray the driver's core is otherwise idle
        (its timings then overlap the ``shards`` stage). Leaving the ``with`` block that
        runs it waits for it, also when a shard failed."""
        self._finish_aggregates(day_aggregates, beside=True)
        with self.timer.stage("user_day", beside=True):
            user_days = self.ops.user_day_alerts(baselines)
            if user_days is not None:
                io.new_dir(staging / io.FLAGGED_USERS)
                io.write_staged_part(user_days.rechunk(),
                                     staging / io.FLAGGED_USERS / PART_NAME.format(index=0))
        return user_days

    def _risk(self, staging: Path, user_days: pl.DataFrame | None) -> RiskRun:
        """Entity risk of the day from the staged flagged part (alerts only: a few per cent of
        the day, the columns risk needs) and the user-day alerts, staged as ``risk/``."""
        staged = io.read_parts(sorted((staging / io.FLAGGED).glob("*.parquet")), among=RISK_FLAGGED_COLUMNS)
        flagged = pl.DataFrame(schema=RISK_FLAGGED_SCHEMA) if staged is None else staged
        run = RiskRun.compute(self.settings, self.day, flagged, user_days, self.directory_snapshot.table)
        io.new_dir(staging / io.RISK)
        io.write_staged_part(run.table, staging / io.RISK / PART_NAME.format(index=0))
        return run

    def _execution(self, input_rows: int, n_shards: int) -> RunPlacement:
        """Decide where the shards run and describe it for the manifest."""
        if self.options.shards:
            log.warning("--shards is ignored: the day is split into %d shards of at most "
                        "scoring.chunk_rows=%d events, planned from the data", n_shards,
                        self.settings.scoring.chunk_rows)
        if self.options.in_process or (self.runtime.address is None
                                       and input_rows < self.settings.ray.min_rows_for_ray):
            reason = ("--in-process requested" if self.options.in_process else
                      f"{input_rows} events < ray.min_rows_for_ray={self.settings.ray.min_rows_for_ray}")
            return {"shards": n_shards, "max_retries": self.settings.ray.max_retries,
                    "chunk_rows": self.settings.scoring.chunk_rows, "mode": IN_PROCESS, "reason": reason,
                    "workers": self._local_threads(), "address": None}
        with self.timer.stage("ray_init"):
            self.runtime.start()
            detail = self.runtime.describe()
        base = {"shards": n_shards, "max_retries": self.settings.ray.max_retries,
                "chunk_rows": self.settings.scoring.chunk_rows}
        # RayRuntime.describe returns RunPlacement's Ray keys (mode, address, workers, ...) as a plain dict
        return cast(RunPlacement, {**base, **detail, "reason": "default" if detail["mode"] == "local"
                                   else "address given"})

    def _local_threads(self) -> int:
        """Shards run side by side in this process: --workers (else ``ray.num_workers``),
        capped by the CPUs this process may use."""
        return max(1, min(self.options.workers or self.settings.ray.num_workers, usable_cpus()))

    def _on_ray(self, execution: RunPlacement) -> bool:
        return execution["mode"] != IN_PROCESS

    def _aggregates(self, execution: RunPlacement) -> Any:
        """Make the lookback's aggregates exist before the baselines; D's own aggregates
        (needed only by the user-day alerts and later days) are computed by a Ray task
        next to the shards, so the day's rows never pass through the driver. Returns
        what ``_finish_aggregates`` waits for (None when D's are current: a rerun or a
        backfill then starts no task, and no worker process just to find nothing to do)."""
        categories = CategoryNames.of(self.settings.events)  # plain names travel to a worker
        lookback = lookback_days(self.day, self.settings.features.lookback_days)
        # before the aggregates are brought up to date: events landing in between make a
        # later look find a change (a re-score too many), never miss one
        self.lookback_events = {d.isoformat(): io.partition_fingerprint(self.data_dir, io.EVENTS, d) or ""
                                for d in lookback}
        with self.timer.stage("aggregates"):
            if not self._on_ray(execution):
                self.aggregates_computed = ensure_aggregates(self.data_dir, [*lookback, self.day], categories)
                return None
            missing = stale_aggregate_days(self.data_dir, [*lookback, self.day], categories)
            earlier = [d for d in missing if d != self.day]
            refs = [self.runtime.submit(ensure_aggregates, self.data_dir, [d], categories) for d in earlier]
            for ref, d in zip(refs, earlier, strict=True):
                computed = self.runtime.result(ref, f"aggregates of {d}")
                self.aggregates_computed += computed
            if self.day not in missing:
                return None
            return self.runtime.submit(ensure_aggregates, self.data_dir, [self.day], categories)

    def _refuse_repeated_ids_if_unverified(self, files: list[Path]) -> None:
        """Ingest stores an event id once per date, and a day whose parts have known
        checksums was written by it or adopted by ``verify --adopt-legacy``, which refuses
        repeats. A day read unverified (see ``_note_unverified_inputs``) was checked by
        neither: its repeated event scored twice and both alerts shared one alert id
        (triage, feedback and risk took them for one finding). So its ids are checked here,
        before anything runs or is written; ``io.repeated_event_ids`` reads only the id
        column, kept as hashes."""
        if not io.unverified_partitions(self.data_dir, io.EVENTS, [self.day]):
            return
        repeated = io.repeated_event_ids(files)
        if repeated is not None:
            raise UserError(
                f"{io.partition_dir(Path(), io.EVENTS, self.day)} {repeated}; an event id is unique within "
                "its date, and this day has no checksum manifest, so ingest never checked it: remove the "
                "repeats (keep one row per event_id) or re-ingest the day's source (ingest drops repeats), "
                "then score again")

    def _note_unverified_inputs(self) -> None:
        """Name the input partitions read without a known sha256 (written before checksum
        manifests, or in a data directory whose manifests and marker are all gone): one
        warning line and ``inputs.unverified_partitions`` in the manifest. Never silent,
        and never turned into verified by a run: ``uba-batch verify --adopt-legacy`` does that."""
        lookback = lookback_days(self.day, self.settings.features.lookback_days)
        events_read = [self.day, *sorted(set(self.aggregates_computed) - {self.day})]  # the day's own first
        self.unverified = (io.unverified_partitions(self.data_dir, io.EVENTS, events_read)
                           + io.unverified_partitions(self.data_dir, io.AGGREGATES, lookback))
        if self.unverified:
            more = f" and {len(self.unverified) - 1} more" if len(self.unverified) > 1 else ""
            log.warning("%d input partition(s) of %s have no checksums and are read unverified (%s%s): a "
                        "changed byte there cannot be detected; if they are intact, record their checksums "
                        "with `uba-batch verify --adopt-legacy` (docs/operations.md)", len(self.unverified),
                        self.day, self.unverified[0], more)

    def _read_directory(self) -> None:
        """The user directory, read once for the whole run and checked against the model
        again: a backfill checks it once before its first day, and an import may land
        between days."""
        self.directory_snapshot = read_directory_snapshot(self.data_dir)
        check_bundle_peers(self.bundle, directory_context(self.data_dir, self.directory_snapshot))

    def _note_directory_coverage(self, baselines: pl.DataFrame) -> None:
        """How many of the run's users the stored directory lists (``inputs.directory``),
        and one warning when it lists none of them: an HR export keyed by e-mail
        addresses, imported with --replace, stored 60 users that no event names, and the
        runs went on without peer groups or privilege weights for anyone, silently (found
        by an attack)."""
        users = baselines["user_id"].filter(baselines["user_id"] != POPULATION_USER)
        self.directory = directory_coverage(self.directory_snapshot, users)
        if self.directory and self.directory["users"] and self.directory["run_users"] \
                and not self.directory["matched_users"]:
            log.warning("none of the %d users with history before %s is in the user directory %s (%d users): its "
                        "peer groups and risk weights apply to nobody; is it keyed by another id than the events' "
                        "user_id? Import one keyed by user_id (uba-batch users import FILE --replace)",
                        self.directory["run_users"], self.day, directory_path(self.data_dir),
                        self.directory["users"])

    def _finish_aggregates(self, pending: Any, beside: bool = False) -> None:
        if pending is None:
            return
        with self.timer.stage("aggregates_day", beside=beside):
            self.aggregates_computed += self.runtime.result(pending, f"aggregates of {self.day}")

    def _run_shards(self, specs: list[ShardSpec], ctx: ShardContext, inputs: shard.ShardInputs,
                    execution: RunPlacement) -> list[shard.ShardResult]:
        if not self._on_ray(execution):
            return run_shards_in_threads(specs, ctx, inputs, execution["workers"])
        boxed = self.runtime.put(inputs)
        return self.runtime.run_shards(specs, ctx, boxed, execution["max_retries"])

    def _merge_results(self, results: list[shard.ShardResult]) -> dict[str, int]:
        """Add up the shards' counts and partial results (drift bins, per-user alerts)."""
        for result in results:
            self.ops.add_partial(result.drift, result.per_user)
        return {"scored_rows": sum(r.rows for r in results),
                "known_user_rows": sum(r.known_user_rows for r in results),
                "flagged_rows": sum(r.flagged_rows for r in results)}

    def _merge_flagged(self, results: list[shard.ShardResult], staging: Path,
                       execution: RunPlacement) -> dict[str, PartRecord]:
        io.new_dir(staging / io.FLAGGED)
        name = PART_NAME.format(index=0)
        parts, out = [r.flagged_part for r in results], str(staging / io.FLAGGED / name)
        if self._on_ray(execution):
            record = self.runtime.result(self.runtime.submit(shard.merge_flagged, parts, out),
                                         "merging the flagged rows")
        else:
            record = shard.merge_flagged(parts, out)
        # merge_flagged (uba.scoring.shard) returns PartRecord's keys as a plain dict
        return {name: record}

    def _publish(self, staging: Path, record: RunRecord) -> RunManifest:
        """Make the staged run the day's output in one step (see ``io.commit_day_version``).

        The staging folder gets every dataset folder (empty ones too) and the manifest,
        the day's stable links are made if missing (which changes nothing readers see),
        the staging folder becomes a version of the day under ``.days/`` (recording the
        version it replaces), and one rename points the anchor at
        the new version: scores, flagged, flagged_users and the manifest switch together.
        The version it replaced is kept for readers still on it; older ones are deleted.
        """
        fault = self.options.fault
        if fault and fault.pause_before_publish_sec:
            log.warning("fault injection: pausing %.1f s before publishing", fault.pause_before_publish_sec)
            time.sleep(fault.pause_before_publish_sec)
        step = self._publish_step
        began = time.perf_counter()
        with self.timer.stage("publish"):
            version_dir = io.day_versions_dir(self.output_dir, self.day) / self.run_id
            # relative to the output directory, like the day's links: still right after a move
            record["outputs"]["version"] = str(version_dir.relative_to(self.output_dir))
            finished = time.time()
            # the manifest is part of what is committed: "publish" = the time up to writing it
            timings = {**self.timer.seconds, "publish": round(time.perf_counter() - began, 6)}
            manifest: RunManifest = {**record, "status": mf.SUCCEEDED, "finished_at": mf.utc_iso(finished),
                                     "duration_sec": round(finished - self.started, 3), "timings_sec": timings}
            self.record = manifest
            with io.stale_marks_lock(self.output_dir):  # no day marked stale between the check and the commit
                self._commit(staging, manifest)
        step("commit")
        try:
            io.prune_day_versions(self.output_dir, self.day)
        except OSError as exc:  # published already: the next run retries the clean-up
            log.warning("could not delete old versions of %s: %s", self.day, exc)
        step("prune")
        return manifest

    def _commit(self, staging: Path, manifest: RunManifest) -> None:
        """Check what changed under this run's risk, write the manifest, mark the later days
        stale if this day's risk changed, and commit the day (``_publish``; the caller holds
        ``io.stale_marks_lock``). The marks come before the commit point: after it, a run
        killed in between left them unmarked for good (re-running finds the risk unchanged)."""
        step = self._publish_step
        stale = self.risk.stale_entries(self.output_dir, self.data_dir)
        if stale:  # an earlier day or a verdict changed while this run computed its risk
            # RiskRun.stale_entries (uba.alerting.risk) returns StaleEntry's keys as plain dicts
            manifest["risk_stale"] = stale
        io.fault_point("manifest", staging / io.MANIFEST_NAME)
        io.write_json_atomic(manifest, staging / io.MANIFEST_NAME, durable=True)
        step("manifest")
        io.ensure_day_links(self.output_dir, self.day, on_step=step)
        step("links")
        io.add_day_version(self.output_dir, self.day, staging, self.run_id)
        step("version")
        try:
            self.risk.mark_later_days(self.output_dir, self.run_id)
        except OSError as exc:  # the day is still worth publishing; say which days may now be stale
            log.warning("could not mark the entity risk of the days after %s stale: %s", self.day, exc)
        io.commit_day_version(self.output_dir, self.day, self.run_id)  # the commit point

    def _publish_step(self, name: str) -> None:
        """Fault injection: SIGKILL (or SIGSTOP, for a test to resume) this process right
        after publish step ``name``."""
        fault = self.options.fault
        if fault and fault.kill_at_publish_step == name:
            log.warning("fault injection: killing the run after publish step %s", name)
            os.kill(os.getpid(), signal.SIGKILL)
        if fault and fault.stop_at_publish_step == name:
            log.warning("fault injection: stopping the run after publish step %s (SIGCONT resumes it)", name)
            os.kill(os.getpid(), signal.SIGSTOP)

    # -- records ---------------------------------------------------------------------

    def _manifest(self, input_rows: int, quarantined: int, counts: dict[str, int],
                  conservation: RowConservation, execution: RunExecution, baselines: pl.DataFrame,
                  score_files: dict[str, PartRecord], flagged_files: dict[str, PartRecord]) -> RunRecord:
        detector = self.bundle.detector
        run_counts: RunCounts = {
            "input_rows": input_rows,
            "scored_rows": counts["scored_rows"],
            "flagged_rows": counts["flagged_rows"],
            "quarantined_rows": quarantined,
            "known_user_rows": counts["known_user_rows"],
            "unknown_user_rows": counts["scored_rows"] - counts["known_user_rows"],
        }
        identity = self._identity()
        inputs: RunInputs = {
            "events": str(io.partition_dir(self.data_dir, io.EVENTS, self.day)),
            "baselines_as_of": self.day.isoformat(),
            "baseline_users": int(baselines.height),
            "lookback_days": self.settings.features.lookback_days,
            "aggregates_computed": [d.isoformat() for d in self.aggregates_computed],
            "unverified_partitions": self.unverified,
            "baseline_protection": self._protection_record(),
            "events_fingerprint": self.events_fingerprint,
            "lookback_events": self.lookback_events,
        }
        if self.directory is not None:
            inputs["directory"] = self.directory
        # the identity's keys one by one: mypy refuses a ** item in a record with optional sections
        return {
            "format": identity["format"],
            "event_date": identity["event_date"],
            "run_id": identity["run_id"],
            "started_at": identity["started_at"],
            "host": identity["host"],
            "pid": identity["pid"],
            "uba_version": identity["uba_version"],
            "status": mf.RUNNING,
            "error": None,
            "inputs": inputs,
            "model": {
                "version": self.bundle.version,
                "path": str(self.bundle.path),
                "feature_set_version": FEATURE_SET_VERSION,
                "features": list(detector.feature_names),
                "threshold": float(detector.threshold),
                "threshold_percentile": float(detector.percentile),
                **model_fit_record(self.bundle, self.day, self.settings),
            },
            "counts": run_counts,
            "row_conservation": conservation,
            "execution": execution,
            "outputs": {
                "scores": {"path": str(io.partition_dir(self.output_dir, io.SCORES, self.day)),
                           "files": score_files},
                "flagged": {"path": str(io.partition_dir(self.output_dir, io.FLAGGED, self.day)),
                            "files": flagged_files},
            },
        }

    def _protection_record(self) -> BaselineProtection:
        """How many user-days of the lookback the baselines left out, so a reader of the
        manifest can tell a protected run from an unprotected one."""
        protection = self.settings.baseline_protection
        unlearned = self.unlearned
        return {"enabled": protection.enabled, "min_active_days": protection.min_active_days,
                "max_days": protection.max_days,
                "unlearned_user_days": 0 if unlearned is None else int(unlearned.height),
                "unlearned_users": 0 if unlearned is None else int(unlearned["user_id"].n_unique())}

    def _identity(self) -> RunIdentity:
        return {
            "format": mf.MANIFEST_FORMAT,
            "event_date": self.day.isoformat(),
            "run_id": self.run_id,
            "started_at": mf.utc_iso(self.started),
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "uba_version": _package_version(),
        }

    def _record_failure(self, exc: BaseException) -> bool:
        """Write the failed run's record beside (never over) the manifest; best effort
        (False when it could not be written, e.g. on a full disk)."""
        finished = time.time()
        # a run that built its record keeps its sections in the failure record
        base: RunIdentity = self.record if self.record is not None else self._identity()
        record: FailureRecord = {
            **base,
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
            log.debug("could not write the failure record of %s: %s", self.day, write_error)
            return False
        return True


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask, which a container's cpuset sets)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def run_shards_in_threads(specs: list[ShardSpec], ctx: ShardContext, inputs: shard.ShardInputs,
                          threads: int) -> list[shard.ShardResult]:
    """Every shard in this process, ``threads`` at a time; results in shard order.

    Threads, not processes, are enough: a shard spends its time in Polars, Arrow and the
    compiled forest, which all release the GIL, and threads share the run's inputs
    without copying them. The first error stops the run (shards not yet started are
    cancelled) and is raised as is, as in the sequential loop.
    """
    if threads <= 1 or len(specs) <= 1:
        return [shard.run_shard(spec, ctx, inputs) for spec in specs]
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="uba-shard") as pool:
        futures = [pool.submit(shard.run_shard, spec, ctx, inputs) for spec in specs]
        try:
            return [future.result() for future in futures]
        finally:
            for future in futures:
                future.cancel()


def _package_version() -> str:
    try:
        return metadata.version("uba")
    except metadata.PackageNotFoundError:
        return "unknown"

