"""Where the model runs: sharded over Ray tasks, or in this process.

The detector is put into the Ray object store once per run (``ray.put``) and every
shard task receives the same reference, so the model is never re-serialised per task;
each task gets only its own row slice of the chunk's feature matrix and feature frame,
scores it and attaches flags and reasons there (the per-row work that dominates a
run), so that work spreads over the workers too. Shards are contiguous row ranges, and
the results are reassembled by shard index, so the output order never depends on which
worker finished first. Scores and reasons are row-local, so the number of shards and
workers never changes a byte: in-process, local Ray and a Ray cluster give identical
outputs.

Ray retries a task whose worker died (``max_retries``) and one that raised a transient
error (``retry_exceptions``: OSError, MemoryError); a shard that still fails fails the
whole run with :class:`ShardFailedError`, and the driver then publishes nothing.

Only this module and the driver import Ray, and only when a run needs it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from uba.errors import UserError

CONNECT_TIMEOUT_SEC = 10.0
# Frames already in memory are finished with the in-memory engine: polars 2.1's streaming
# engine intermittently panicked ("assertion failed: i < self.len()" in binview) on the
# string expressions of the reasons over sliced or concatenated frames.
EAGER_ENGINE = "in-memory"
RETRYABLE_EXCEPTIONS: tuple[type[BaseException], ...] = (OSError, MemoryError)
FAULT_ENV = {
    "shard_delay_sec": "UBA_FAULT_SHARD_DELAY_SEC",
    "pid_dir": "UBA_FAULT_PID_DIR",
    "pause_before_publish_sec": "UBA_FAULT_PAUSE_BEFORE_PUBLISH_SEC",
}


class RunFailedError(UserError):
    """The run could not finish for a reason outside the input (lost worker, unreachable
    cluster). Reported as one line like a user error; details go to the failure record."""


class ShardFailedError(RunFailedError):
    """A scoring shard failed even after Ray's retries."""


@dataclass(frozen=True)
class FaultInjection:
    """Test hooks that make a run slow at chosen points so a test can kill it there.

    ``shard_delay_sec`` sleeps in every shard task after it has written its PID into
    ``pid_dir`` (so a test can SIGKILL that worker); ``pause_before_publish_sec`` sleeps
    after the staging directory is complete and before it is swapped in. Never set in
    production; the CLI reads them from ``UBA_FAULT_*`` environment variables.
    """

    shard_delay_sec: float = 0.0
    pid_dir: str | None = None
    pause_before_publish_sec: float = 0.0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> FaultInjection | None:
        env = os.environ if env is None else env
        if not any(env.get(var) for var in FAULT_ENV.values()):
            return None
        return cls(
            shard_delay_sec=float(env.get(FAULT_ENV["shard_delay_sec"]) or 0.0),
            pid_dir=env.get(FAULT_ENV["pid_dir"]) or None,
            pause_before_publish_sec=float(env.get(FAULT_ENV["pause_before_publish_sec"]) or 0.0),
        )


def shard_bounds(n_rows: int, n_shards: int) -> list[tuple[int, int]]:
    """Contiguous, non-empty row ranges covering ``[0, n_rows)``, as even as possible."""
    n_shards = max(1, min(n_shards, n_rows))
    edges = np.linspace(0, n_rows, n_shards + 1).round().astype(int)
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:], strict=True) if b > a]


def _run_fault_hooks(fault: FaultInjection | None, label: str) -> None:
    if fault is None:
        return
    if fault.pid_dir:
        folder = Path(fault.pid_dir)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{label}.{os.getpid()}.pid").write_text(str(os.getpid()))
    if fault.shard_delay_sec:
        time.sleep(fault.shard_delay_sec)


@dataclass(frozen=True)
class ShardWork:
    """What every shard does besides scoring: the flag, threshold, model version and
    reasons it attaches (so that per-row work runs on the workers, not the driver)."""

    model_version: str
    max_reasons: int
    fault: FaultInjection | None = None


def score_shard(detector: Any, matrix: np.ndarray, features: Any, work: ShardWork,
                label: str = "shard") -> Any:
    """Score and explain one row range; runs in a Ray worker, or in-process with the same code.

    Returns the shard's features with ``anomaly_score``, ``is_anomaly``, ``threshold``,
    ``model_version``, ``reasons`` and ``reason_kinds`` (a Polars DataFrame, same rows
    and order as ``features``).
    """
    from uba.scoring.outputs import annotate

    _run_fault_hooks(work.fault, label)
    scores = detector.anomaly_scores(matrix)
    return annotate(features.lazy(), scores, detector.is_anomaly(scores), detector.threshold,
                    work.model_version, work.max_reasons).collect(engine=EAGER_ENGINE)


def _shards(n_rows: int, n_shards: int) -> list[tuple[int, int]]:
    # an empty chunk still yields one (empty) shard, so the result has the output schema
    return shard_bounds(n_rows, n_shards) or [(0, 0)]


def _concat(parts: list[Any]) -> Any:
    import polars as pl

    # one contiguous chunk: later selects on many small string-view chunks hit a polars panic
    return pl.concat(parts, how="vertical", rechunk=True) if len(parts) > 1 else parts[0]


def score_in_process(detector: Any, matrix: np.ndarray, features: Any, n_shards: int,
                     work: ShardWork, label: str = "chunk") -> Any:
    """The no-Ray path: the same shards, through the same Arrow boundary as a Ray task,
    one after another in this process."""
    import polars as pl

    return _concat([
        pl.from_arrow(score_shard_arrow(detector, matrix[a:b], features.slice(a, b - a).to_arrow(),
                                        work, f"{label}-s{i:04d}"))
        for i, (a, b) in enumerate(_shards(len(matrix), n_shards))])


def score_shard_arrow(detector: Any, matrix: np.ndarray, features: Any, work: ShardWork,
                      label: str = "shard") -> Any:
    """``score_shard`` with Arrow tables at the task boundary.

    Ray pickles a Polars frame through an IPC copy, but ships an Arrow table's buffers
    out of band into the object store; that made a shard's round trip about ten times
    cheaper (measured on 62,500 events: 0.18 s -> 0.014 s).
    """
    import polars as pl

    return score_shard(detector, matrix, pl.from_arrow(features), work, label).to_arrow()


@cache
def _remote_score_shard() -> Any:
    import ray

    return ray.remote(num_cpus=1)(score_shard_arrow)


def _one_line(text: str) -> str:
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    return lines[0] if lines else "unknown error"


def _failure_message(exc: BaseException) -> str:
    import ray

    if isinstance(exc, ray.exceptions.RayTaskError):
        cause = exc.cause
        if cause is not None and not isinstance(cause, ray.exceptions.RayError):
            return f"{type(cause).__name__}: {_one_line(str(cause))}"
    return f"{type(exc).__name__}: {_one_line(str(exc))}"


def check_reachable(address: str, timeout_sec: float = CONNECT_TIMEOUT_SEC) -> None:
    """Fail fast on a cluster address nobody answers on.

    ``ray.init(address=...)`` retries an unreachable GCS for many minutes, which would
    turn a typo in a nightly job into a silent hang; a plain TCP connect answers in
    seconds. ``auto`` is left to Ray, which resolves it from this machine's cluster.
    """
    if address == "auto":
        return
    target = address.split("://", 1)[-1]
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        raise UserError(f"--ray-address {address!r} is not 'auto' or host:port")
    try:
        socket.create_connection((host, int(port)), timeout=timeout_sec).close()
    except OSError as exc:
        reason = exc.strerror or str(exc) or type(exc).__name__
        raise RunFailedError(f"cannot connect to the Ray cluster at {address}: {reason}") from exc


class RayRuntime:
    """The job's connection to Ray, made on first use and closed by the job.

    ``address`` None starts an embedded single-node Ray bound to 127.0.0.1 with
    ``workers`` CPUs and no dashboard; ``"auto"`` or ``host:port`` joins an existing
    cluster. A runtime that is already initialised in this process (a test session, a
    backfill) is reused and left running.
    """

    def __init__(self, address: str | None, workers: int | None, default_workers: int,
                 object_store_memory_mb: int | None = None) -> None:
        self.address = address
        self.requested_workers = workers
        self.default_workers = default_workers
        self.object_store_memory_mb = object_store_memory_mb
        self.started = False
        self.owned = False
        self.mode = "cluster" if address else "local"
        self._detector_refs: dict[str, Any] = {}

    def start(self) -> None:
        """Init or join Ray once; failures become one-line RunFailedError errors."""
        if self.started:
            return
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        import ray

        if not ray.is_initialized():
            if self.address:
                check_reachable(self.address)
            try:
                ray.init(**self._init_kwargs())
            except Exception as exc:
                what = (f"cannot connect to the Ray cluster at {self.address}" if self.address
                        else "cannot start the embedded local Ray")
                raise RunFailedError(f"{what}: {_one_line(str(exc))}") from exc
            self.owned = True
        self.started = True

    def _init_kwargs(self) -> dict[str, Any]:
        common: dict[str, Any] = {"log_to_driver": False, "logging_level": logging.WARNING,
                                  "namespace": "uba"}
        if self.address:
            return {"address": self.address, **common}
        # address="local" always starts a fresh instance: without it ray.init() joins any
        # cluster a `ray start` left registered on this machine (even a dead one).
        kwargs = {"address": "local", "num_cpus": self.requested_workers or self.default_workers,
                  "include_dashboard": False, "_node_ip_address": "127.0.0.1", **common}
        if self.object_store_memory_mb:
            kwargs["object_store_memory"] = self.object_store_memory_mb * 1024 * 1024
        return kwargs

    def workers(self) -> int:
        """Concurrent shard tasks: on the embedded Ray, --workers (else the configured count)
        capped by its CPUs; on a joined cluster, --workers if given, else all its CPUs."""
        import ray

        cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
        if self.mode == "cluster":
            return self.requested_workers or cpus
        return min(self.requested_workers or self.default_workers, cpus)

    def describe(self) -> dict[str, Any]:
        """What the manifest records about where the run happened."""
        import ray

        resources = ray.cluster_resources()
        return {
            "mode": self.mode,
            "address": self.address,
            "started_by_job": self.owned and self.mode == "local",
            "cluster_cpus": int(resources.get("CPU", 0)),
            "nodes": sum(1 for n in ray.nodes() if n.get("Alive")),
            "workers": self.workers(),
        }

    def detector_ref(self, version: str, detector: Any) -> Any:
        """The detector's object-store reference, put once per model version and runtime."""
        import ray

        if version not in self._detector_refs:
            self._detector_refs[version] = ray.put(detector)
        return self._detector_refs[version]

    def score(self, detector_ref: Any, matrix: np.ndarray, features: Any, n_shards: int,
              max_retries: int, work: ShardWork, label: str = "chunk") -> Any:
        """Score and explain a chunk over Ray tasks, at most ``workers()`` in flight.

        Each task gets only its own row slice of the matrix and of the features (Ray
        stores task arguments in the object store once, also for retries) and the shared
        detector reference; results are put back in shard order.
        """
        import polars as pl
        import ray

        task = _remote_score_shard().options(
            max_retries=max_retries, retry_exceptions=list(RETRYABLE_EXCEPTIONS))
        limit = self.workers()
        queue = list(enumerate(_shards(len(matrix), n_shards)))
        results: dict[int, Any] = {}
        in_flight: dict[Any, int] = {}
        try:
            while queue or in_flight:
                while queue and len(in_flight) < limit:
                    index, (start, stop) = queue.pop(0)
                    ref = task.remote(detector_ref, matrix[start:stop],
                                      features.slice(start, stop - start).to_arrow(),
                                      work, f"{label}-s{index:04d}")
                    in_flight[ref] = index
                done, _ = ray.wait(list(in_flight), num_returns=1)
                for ref in done:
                    index = in_flight.pop(ref)
                    results[index] = pl.from_arrow(self._get_shard(ref, label, index, max_retries))
        finally:
            for ref in in_flight:
                with contextlib.suppress(Exception):
                    ray.cancel(ref, force=False)
        return _concat([results[i] for i in range(len(results))])

    @staticmethod
    def _get_shard(ref: Any, label: str, index: int, max_retries: int) -> Any:
        import ray

        try:
            return ray.get(ref)
        except ray.exceptions.RayError as exc:
            raise ShardFailedError(
                f"scoring shard {index} of {label} failed after {max_retries} "
                f"retr{'y' if max_retries == 1 else 'ies'}: {_failure_message(exc)}"
            ) from exc

    def close(self) -> None:
        """Shut down the embedded Ray this job started; a joined or reused one stays up."""
        if self.owned:
            import ray

            ray.shutdown()
            self.owned = False
        self.started = False
        self._detector_refs.clear()
