"""One shard of a day, end to end: read, features, score, decide, explain, write.

This is all the per-row work of ``score --date``. It runs in a Ray worker (or, in-process,
in the driver) and touches only its own slice of the day:

1. reads its pieces of the events partition straight from storage;
2. joins them with the baselines and computes features with the shared feature module;
3. scores them with the bundle's detector;
4. decides ``is_anomaly`` (global or per-user cut) and ``suppressed``;
5. gives every row its ``reason_kinds`` and only flagged rows their sentences;
6. writes its own ``scores`` part and a ``flagged`` part into the run's staging folder;
7. returns a :class:`ShardResult` of counts, checksums and mergeable partial results
   (drift bin counts, per-user alert counts): never the rows themselves.

What every shard of a run shares (detector, baselines, per-user cuts, suppression
rules, drift reference) travels once as :class:`ShardInputs`; on Ray a worker fetches
it once per run and keeps it for the run's later shards (see ``ray_backend``).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Final

import numpy as np
import numpy.typing as npt
import polars as pl

from uba import io
from uba.alerting.feedback import rule_tuples
from uba.alerting.thresholds import decide, user_cut_array
from uba.features.compiled import CompiledBaselines, compile_baselines
from uba.features.events import features_frame
from uba.features.pipeline import feature_major
from uba.features.reasons import phrase_frame, rank_frame
from uba.manifest import PartRecord, ShardRecord
from uba.model.forest import Detector
from uba.monitoring.drift import DayReference, DriftCounts, drift_counts
from uba.schema import EVENT_SCHEMA
from uba.scoring import outputs
from uba.scoring.context import FaultInjection, ShardContext
from uba.scoring.plan import Piece, ShardSpec

SCORES_DIR = io.SCORES
FLAGGED_PARTS_DIR = "flagged-parts"
# Frames already in memory are finished with the in-memory engine: polars 2.1's streaming
# engine intermittently panicked ("assertion failed: i < self.len()" in binview) on the
# string expressions of the reasons over sliced or concatenated frames.
EAGER_ENGINE: Final = "in-memory"
# Steps of publishing a day, in order (the driver's ``_publish``); ``link:*`` steps run
# only when a link is made (a day's first run, or one in the layout before versions).
PUBLISH_STEPS = ("manifest", "link:scores", "link:flagged", "link:flagged_users", "link:manifest",
                 "links", "version", "commit", "prune")
# a shard's per-user partial counts (``per_user_counts``), summed by the driver's
# ``RunOperations.add_partial`` (here, not in ``hooks``: a worker then never imports hooks'
# user-day alerts and trends)
PER_USER_SCHEMA = {"user_id": pl.String(), "events": pl.Int64(), "alerts_global": pl.Int64(),
                   "alerts_user": pl.Int64(), "suppressed": pl.Int64()}


@dataclass(frozen=True, eq=False)
class ShardInputs:
    """What all shards of a run read, in memory: put in Ray's object store once per run.

    ``baselines``, ``cuts`` (None without per-user thresholds) and ``rules`` are Polars
    frames; ``drift_reference`` is the bundle's metadata with the reference for the day's
    weekday (its shape is ``uba.monitoring.drift``'s).
    """

    detector: Detector
    baselines: pl.DataFrame
    cuts: pl.DataFrame | None
    rules: pl.DataFrame
    drift_reference: DayReference

    @cached_property
    def compiled(self) -> CompiledBaselines:
        """The baselines compiled for the feature kernel: once per process and run (a Ray
        worker keeps its inputs for the run's later shards), not once per shard."""
        return compile_baselines(self.baselines)


@dataclass
class ShardResult:
    """What a shard sends back: counts, checksums and partial results to merge."""

    index: int
    rows: int
    known_user_rows: int
    flagged_rows: int
    scores_file: dict[str, PartRecord]
    flagged_part: str
    drift: DriftCounts
    # in PER_USER_SCHEMA. A Polars frame, not an Arrow table: Ray pickles an Arrow table
    # through its own reducer, which imported pandas in the worker (0.34 s of the first
    # shard of every worker, on the run's critical path); a frame pickles as IPC bytes.
    per_user: pl.DataFrame
    seconds: dict[str, float] = field(default_factory=dict)
    pid: int = 0
    node_id: str = "driver"
    fetched_inputs: bool = False

    def record(self) -> ShardRecord:
        """The shard's line in the manifest (where it ran, how long each step took)."""
        return {"index": self.index, "rows": self.rows, "flagged_rows": self.flagged_rows,
                "node_id": self.node_id, "pid": self.pid, "fetched_inputs": self.fetched_inputs,
                "seconds": {k: round(v, 4) for k, v in self.seconds.items()}}


class _Stopwatch:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        began = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - began


def read_pieces(pieces: tuple[Piece, ...]) -> pl.DataFrame:
    """The shard's events in the stored schema, pieces in plan order.

    Each file is first checked against the sha256 recorded when it was written (once per
    worker process per file: a file cut into several pieces is hashed once by a worker
    that reads several), so a flipped byte fails the shard with one line naming the file
    instead of changing a timestamp. Verifying here, where the rows are read, spreads the
    hashing over the workers; the driver never reads the day. Each piece is read as
    ``EVENT_SCHEMA`` whatever column types its writer chose (``io.read_event_piece``), so
    a day written by another tool scores, and publishes, as the day ingest wrote.
    """
    for path in dict.fromkeys(piece.path for piece in pieces):
        io.verify_part(Path(path), "restore it from a backup or re-ingest its source")
    frames = [io.read_event_piece(piece.path, piece.offset, piece.rows) for piece in pieces]
    if not frames:
        return pl.DataFrame(schema=EVENT_SCHEMA)
    # One chunk per column (a parquet read gives one per row group): the feature columns
    # joined to these are single arrays, and Polars re-aligns a frame whose columns are cut
    # differently in each eager operation on it (about 4 ms on 250 k rows, a dozen times a
    # shard), where this one copy costs about 3 ms.
    return pl.concat(frames, how="vertical", rechunk=True) if len(frames) > 1 else frames[0].rechunk()


def annotate(features: pl.DataFrame, scores: npt.NDArray[np.float64], inputs: ShardInputs,
             ctx: ShardContext) -> pl.DataFrame:
    """Scores, reason kinds, the decision (``uba.alerting.thresholds.decide``, as the API decides)
    and sentences for the flagged rows, on the shard's feature frame."""
    threshold = float(inputs.detector.threshold)
    scores = np.asarray(scores, dtype=np.float64)
    kinds = rank_frame(features, ctx.max_reasons)
    user_ids = features["user_id"].cast(pl.String)
    cuts = (user_cut_array(user_ids, inputs.cuts, threshold) if inputs.cuts is not None
            else np.full(features.height, threshold))
    # Series index like lists; only flagged rows are looked at, and only when rules exist
    decision = decide(scores, cuts, user_ids, kinds.list.first(), rule_tuples(inputs.rules))
    decided = features.with_columns(
        pl.Series("anomaly_score", scores),
        pl.lit(threshold, dtype=pl.Float64).alias("threshold"),
        pl.lit(ctx.model_version, dtype=pl.String).alias("model_version"),
        pl.Series("user_threshold", decision.cuts, dtype=pl.Float64),
        pl.Series("is_anomaly", decision.is_anomaly, dtype=pl.Boolean),
        kinds,
    )
    suppressed_by = pl.Series("suppressed_by", decision.suppressed_by, dtype=pl.String)
    return decided.with_columns(
        phrase_frame(decided, kinds, decision.is_anomaly),
        suppressed_by,
        # Decision.suppressed, without its Python loop over every row (a rule id is never null)
        suppressed_by.is_not_null().alias("suppressed"),
    )


def per_user_counts(annotated: pl.DataFrame) -> pl.DataFrame:
    """Per-user event, alert and suppression counts: partial sums the driver adds up."""
    return annotated.group_by("user_id").agg(
        pl.len().cast(pl.Int64).alias("events"),
        (pl.col("anomaly_score") >= pl.col("threshold")).sum().cast(pl.Int64).alias("alerts_global"),
        pl.col("is_anomaly").sum().cast(pl.Int64).alias("alerts_user"),
        pl.col("suppressed").sum().cast(pl.Int64).alias("suppressed"),
    ).select(list(PER_USER_SCHEMA)).cast(pl.Schema(PER_USER_SCHEMA))


def _run_fault_hooks(fault: FaultInjection | None, label: str) -> None:
    if fault is None:
        return
    if fault.pid_dir:
        folder = Path(fault.pid_dir)
        io.write_bytes_atomic(str(os.getpid()).encode(), folder / f"{label}.{os.getpid()}.pid")
    if fault.shard_delay_sec:
        time.sleep(fault.shard_delay_sec)


def _write(df: pl.DataFrame, path: Path) -> PartRecord:
    """One part with fixed options (one row group run, fixed name) so bytes are reproducible."""
    io.write_staged_part(df.rechunk(), path)
    return {"rows": df.height, "sha256": io.file_sha256(path)}


def run_shard(spec: ShardSpec, ctx: ShardContext, inputs: ShardInputs) -> ShardResult:
    """Score one shard and write its parts; see the module docstring for the steps."""
    _run_fault_hooks(ctx.fault, f"{ctx.day.isoformat()}-s{spec.index:05d}")
    watch = _Stopwatch()
    detector = inputs.detector
    with watch.stage("read"):
        events = read_pieces(spec.pieces)
    with watch.stage("features"):
        features = features_frame(events, inputs.compiled)
        matrix = feature_major(features, detector.feature_names).T  # rows x features, feature-major
    with watch.stage("scoring"):
        scores = detector.anomaly_scores(matrix)
    with watch.stage("decide_explain"):
        annotated = annotate(features, scores, inputs, ctx)
        drift = drift_counts(matrix, scores, inputs.drift_reference)
        per_user = per_user_counts(annotated)
    staging = Path(ctx.staging)
    with watch.stage("write"):
        scored = (annotated.select(outputs.SCORE_COLUMNS) if outputs.in_score_order(annotated)
                  else outputs.score_rows(annotated.lazy()).collect(engine=EAGER_ENGINE))
        flagged = outputs.flagged_rows(annotated.lazy()).collect(engine=EAGER_ENGINE)
        scores_file = _write(scored, staging / SCORES_DIR / spec.part_name)
        flagged_part = staging / FLAGGED_PARTS_DIR / spec.part_name
        _write(flagged, flagged_part)
    return ShardResult(
        index=spec.index, rows=scored.height, known_user_rows=int(scored["known_user"].sum()),
        flagged_rows=flagged.height, scores_file={spec.part_name: scores_file},
        flagged_part=str(flagged_part), drift=drift, per_user=per_user,
        seconds=watch.seconds, pid=os.getpid())


def merge_flagged(parts: list[str], out: str) -> PartRecord:
    """The day's single ``flagged`` part: every shard's flagged rows, most anomalous first.

    Runs where the shards' parts are (a Ray task, or the driver in-process), reading only
    flagged rows, a few percent of the day.
    """
    merged = io.read_parts(parts)
    if merged is None:
        raise ValueError("merge_flagged was given no parts: the driver merges only when a shard flagged rows")
    ordered = merged.sort(outputs.FLAGGED_SORT_KEY, descending=[True, False])
    return _write(ordered, Path(out))
