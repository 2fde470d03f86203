"""Where the shards run: Ray tasks on an embedded or joined Ray, or this process.

Each shard task runs the whole per-row pipeline of ``uba.scoring.shard.run_shard`` on
its own slice of the day, read from shared storage, and returns only counts, checksums
and partial results. What all shards share (detector, baselines, cuts, rules) is put
into the object store once per run; a worker fetches it on its first shard of the run
and keeps it for the next ones (``ray_worker``), so it crosses the network once per
worker, not once per task. The task receives the reference boxed in a list so Ray does
not resolve it for every task.

Ray retries a task whose worker died (``max_retries``) and one that raised a transient
error (``retry_exceptions``: OSError, MemoryError); shards are idempotent (a fixed part
name written atomically), so a retry is safe. A shard that still fails fails the whole
run with :class:`ShardFailedError`, and the driver then publishes nothing.

Only this module, the driver and the worker side (``ray_worker``, what the tasks run)
import Ray, and only when a run needs it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import socket
from collections.abc import Callable
from functools import cache
from typing import TYPE_CHECKING, Any, TypedDict, TypeVar, cast

from uba.errors import UserError
from uba.scoring import ray_worker
from uba.scoring.context import ShardContext
from uba.scoring.plan import ShardSpec
from uba.scoring.ray_worker import TASK_CPUS

if TYPE_CHECKING:  # Ray is imported only when a run needs it (see the module doc)
    from ray import ObjectRef

    from uba.scoring.shard import ShardInputs, ShardResult

__all__ = ["RayRuntime", "RunFailedError", "ShardFailedError", "check_reachable"]

R = TypeVar("R")

CONNECT_TIMEOUT_SEC = 10.0
QUEUED_PER_SLOT = 2  # shard tasks in flight per worker slot when the run has the whole cluster
RETRYABLE_EXCEPTIONS: tuple[type[BaseException], ...] = (OSError, MemoryError)


class RunFailedError(UserError):
    """The run could not finish for a reason outside the input (lost worker, unreachable
    cluster). Reported as one line like a user error; details go to the failure record."""


class ShardFailedError(RunFailedError):
    """A scoring shard failed even after Ray's retries."""


class _NodeSlots:
    """Free task slots per node (its CPUs), with a cap on the total in flight.

    ``depth`` tasks per slot may be in flight: with 2, each worker has its next shard
    queued when it finishes one, instead of idling while the driver hears of the end,
    fetches the result and submits the next (0.05-0.5 s per shard, more on a busy
    machine). Only safe when Ray's own CPU accounting is the cap, i.e. when the run may
    use every CPU of the cluster: a second queued task cannot then run early.
    """

    def __init__(self, node_cpus: dict[str, int], limit: int, depth: int = 1) -> None:
        if not node_cpus:
            raise RunFailedError("the Ray cluster has no live node with a CPU to run shards on")
        self.free_per_node = {node: cpus * depth for node, cpus in node_cpus.items()}
        self.room = max(1, limit) * depth

    def free(self) -> bool:
        return self.room > 0

    def take(self) -> str:
        """The node with the most free CPUs (it may be over-committed when all are busy)."""
        node = max(self.free_per_node, key=lambda n: self.free_per_node[n])
        self.free_per_node[node] -= 1
        self.room -= 1
        return node

    def give_back(self, node: str) -> None:
        self.free_per_node[node] = self.free_per_node.get(node, 0) + 1
        self.room += 1


class RayPlacement(TypedDict):
    """Where a run happened, as the manifest records it."""

    mode: str
    address: str | None
    started_by_job: bool
    cluster_cpus: int
    nodes: int
    workers: int


class _RayNode(TypedDict, total=False):
    """The fields of a ``ray.nodes()`` entry read here."""

    NodeID: str
    Alive: bool
    Resources: dict[str, float]


def _cluster_resources() -> dict[str, float]:
    import ray

    return cast("Callable[[], dict[str, float]]", ray.cluster_resources)()  # Ray leaves it unannotated


def _nodes() -> list[_RayNode]:
    import ray

    return cast("Callable[[], list[_RayNode]]", ray.nodes)()  # Ray leaves it unannotated


@cache
def _remote(fn: Callable[..., Any]) -> Any:  # Any: a Ray RemoteFunction, untyped in Ray
    import ray

    return ray.remote(num_cpus=TASK_CPUS)(fn)


def _named(fn: Callable[..., object]) -> tuple[str, str]:
    """Where a worker finds ``fn``: tasks name a module-level function (``ray_worker.call``)."""
    name = getattr(fn, "__qualname__", "")
    if not name or "." in name or "<" in name:
        raise ValueError(f"a Ray task must be a module-level function, got {fn!r}")
    return fn.__module__, name


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


def _how_it_failed(exc: BaseException, max_retries: int) -> str:
    """What ended a shard task, without claiming retries Ray never made: an error about the
    input (a UserError, e.g. a part whose column cannot hold its field) or any exception
    outside RETRYABLE_EXCEPTIONS fails the task at once; only a lost worker or a retryable
    exception was retried."""
    import ray

    cause = exc.cause if isinstance(exc, ray.exceptions.RayTaskError) else None
    if isinstance(cause, UserError):
        return f"failed: {_one_line(str(cause))}"
    if cause is not None and not isinstance(cause, (ray.exceptions.RayError, *RETRYABLE_EXCEPTIONS)):
        return f"failed: {_failure_message(exc)}"
    return f"failed after {max_retries} retr{'y' if max_retries == 1 else 'ies'}: {_failure_message(exc)}"


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


def use_token_auth_for_embedded_ray() -> None:
    """Token authentication for the job's own Ray, with a fresh token held in the
    environment of this process and the Ray processes it starts.

    Left unset, Ray turns token mode on for a new local instance and warns about it on
    every run, and with no token yet writes one to ``~/.ray/auth_token``. An operator's
    explicit ``RAY_AUTH_MODE`` (or token) is kept as is.
    """
    if "RAY_AUTH_MODE" in os.environ:
        return
    os.environ["RAY_AUTH_MODE"] = "token"
    os.environ.setdefault("RAY_AUTH_TOKEN", secrets.token_hex(32))

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

    def start(self) -> None:
        """Init or join Ray once; failures become one-line RunFailedError errors."""
        if self.started:
            return
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        if not self.address:
            use_token_auth_for_embedded_ray()
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

    def _init_kwargs(self) -> dict[str, Any]:  # Any: the keyword arguments of ray.init
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
        cpus = max(1, int(_cluster_resources().get("CPU", 1)))
        if self.mode == "cluster":
            return self.requested_workers or cpus
        return min(self.requested_workers or self.default_workers, cpus)

    def describe(self) -> RayPlacement:
        """What the manifest records about where the run happened."""
        resources = _cluster_resources()
        return {
            "mode": self.mode,
            "address": self.address,
            "started_by_job": self.owned and self.mode == "local",
            "cluster_cpus": int(resources.get("CPU", 0)),
            "nodes": sum(1 for n in _nodes() if n.get("Alive")),
            "workers": self.workers(),
        }

    def put(self, value: ShardInputs) -> list[ObjectRef[ShardInputs]]:
        """``value`` in the object store, boxed so tasks resolve it themselves (once per worker)."""
        import ray

        return [ray.put(value)]

    def warm_up(self) -> list[ObjectRef[int]]:
        """Start one warm-up task per worker slot; the caller need not wait for them."""
        return [_remote(ray_worker.warm_up).remote() for _ in range(self.workers())]

    def submit(self, fn: Callable[..., R], *args: object, max_retries: int = 3) -> ObjectRef[R]:
        """Run ``fn(*args)`` as one Ray task (aggregates, the flagged merge)."""
        module, name = _named(fn)
        ref: ObjectRef[R] = _remote(ray_worker.call).options(
            max_retries=max_retries, retry_exceptions=list(RETRYABLE_EXCEPTIONS)).remote(module, name, *args)
        return ref

    @staticmethod
    def result(ref: ObjectRef[R], what: str) -> R:
        """The value of a task started with ``submit``; a failure is one line naming ``what``."""
        import ray

        try:
            return ray.get(ref)
        except ray.exceptions.RayError as exc:
            raise RunFailedError(f"{what} failed: {_failure_message(exc)}") from exc

    def run_shards(self, specs: list[ShardSpec], ctx: ShardContext, boxed_inputs: list[ObjectRef[ShardInputs]],
                   max_retries: int) -> list[ShardResult]:
        """Run every shard as a Ray task, at most ``workers()`` in flight; results in shard order.

        Each task goes to the node with the most free CPUs right now (soft node affinity,
        so a retry after a node died may land anywhere): Ray's own placement packs tasks
        onto the driver's node while its view of the others is stale, which left a second
        node idle. Results are ordered by shard index, never by completion.
        """
        import ray

        node_cpus = self._node_cpus()
        workers = self.workers()
        slots = _NodeSlots(node_cpus, workers, depth=QUEUED_PER_SLOT if workers >= sum(node_cpus.values()) else 1)
        queue = list(specs)
        results: dict[int, ShardResult] = {}
        in_flight: dict[ObjectRef[ShardResult], tuple[int, str]] = {}
        try:
            while queue or in_flight:
                while queue and slots.free():
                    spec, node = queue.pop(0), slots.take()
                    ref = self._shard_task(node, max_retries).remote(spec, ctx, boxed_inputs)
                    in_flight[ref] = (spec.index, node)
                done, _ = ray.wait(list(in_flight), num_returns=1)
                for ref in done:
                    index, node = in_flight.pop(ref)
                    slots.give_back(node)
                    results[index] = self._get_shard(ref, ctx.day.isoformat(), index, max_retries)
        finally:
            for ref in in_flight:
                with contextlib.suppress(Exception):
                    ray.cancel(ref, force=False)
        return [results[spec.index] for spec in specs]

    @staticmethod
    def _shard_task(node: str, max_retries: int) -> Any:  # Any: a Ray RemoteFunction, untyped in Ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        return _remote(ray_worker.shard_task).options(
            max_retries=max_retries, retry_exceptions=list(RETRYABLE_EXCEPTIONS),
            scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=node, soft=True))

    @staticmethod
    def _node_cpus() -> dict[str, int]:
        """CPUs of every live node that has any, in a stable order."""
        nodes = {n["NodeID"]: int(n.get("Resources", {}).get("CPU", 0)) for n in _nodes() if n.get("Alive")}
        return {node: cpus for node, cpus in sorted(nodes.items()) if cpus > 0}

    @staticmethod
    def _get_shard(ref: ObjectRef[ShardResult], label: str, index: int, max_retries: int) -> ShardResult:
        import ray

        try:
            return ray.get(ref)
        except ray.exceptions.RayError as exc:
            raise ShardFailedError(f"scoring shard {index} of {label} {_how_it_failed(exc, max_retries)}") from exc

    def close(self) -> None:
        """Shut down the embedded Ray this job started; a joined or reused one stays up."""
        if self.owned:
            import ray

            ray.shutdown()
            self.owned = False
        self.started = False
