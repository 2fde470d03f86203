"""What a Ray worker runs for a scoring job: the shard task, the warm-up, and any other
task of the run (``call``).

Ray imports this module to unpickle a task, before the task runs, so it imports nothing
heavy itself: each task first caps Polars' thread pool (``cap_threads``) and only then
imports the shard code. Polars sizes its pool once, when it is imported, from
``POLARS_MAX_THREADS``. The cap used to travel as a job-level ``runtime_env``; with one,
Ray starts every worker of every run through its ``setup_worker`` process, a second
interpreter start and Ray import per worker, about half a second of each worker's
start on this project's machines.

The task arguments keep to the same rule: ``ShardSpec`` (``plan``) and ``ShardContext``
(``context``) unpickle without Polars, and the shared inputs arrive as a boxed object
reference that the task resolves after the cap.
"""

from __future__ import annotations

import os
import sys
from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ray import ObjectRef

    from uba.scoring.context import ShardContext
    from uba.scoring.plan import ShardSpec
    from uba.scoring.shard import ShardInputs, ShardResult

TASK_CPUS = 1  # CPUs one task asks Ray for, and the Polars threads it runs
POLARS_THREADS_ENV = "POLARS_MAX_THREADS"

_WORKER_INPUTS: dict[str, ShardInputs] = {}


def cap_threads() -> None:
    """One Polars thread per task CPU, set before this worker imports Polars.

    Without it Polars sizes its pool to the whole node in every worker: two shard tasks
    on a two-core node then ran four busy threads, each shard took about twice as long
    as alone, and adding workers bought nothing."""
    if "polars" not in sys.modules:
        os.environ[POLARS_THREADS_ENV] = str(TASK_CPUS)


def polars_threads() -> int:
    """The size of this worker's Polars pool (what ``cap_threads`` achieved)."""
    import polars as pl

    return int(pl.thread_pool_size())


def warm_up() -> tuple[int, int]:
    """Import the shard code (Polars, the feature module, the model) and load the compiled
    loops (forest, twin search, reason ranking) in a worker while the driver still builds
    the baselines, so the first shard does not pay for them. Returns the worker's PID and
    its Polars threads."""
    cap_threads()
    import uba.scoring.shard  # noqa: F401
    from uba.model.forest import import_compiled_loops

    import_compiled_loops(shard=True)
    return os.getpid(), polars_threads()


def _worker_inputs(run_key: str, boxed_ref: list[ObjectRef[ShardInputs]]) -> tuple[ShardInputs, bool]:
    """The run's shared inputs, fetched from the object store once per worker and run."""
    cached = _WORKER_INPUTS.get(run_key)
    if cached is not None:
        return cached, False
    import ray

    inputs = ray.get(boxed_ref[0])
    _WORKER_INPUTS.clear()  # a worker serves one run at a time; drop the previous run's
    _WORKER_INPUTS[run_key] = inputs
    return inputs, True


def shard_task(spec: ShardSpec, ctx: ShardContext, boxed_ref: list[ObjectRef[ShardInputs]]) -> ShardResult:
    """One shard of the day on this worker (``uba.scoring.shard.run_shard``)."""
    cap_threads()
    import ray

    from uba.scoring.shard import run_shard

    inputs, fetched = _worker_inputs(ctx.run_key, boxed_ref)
    result = run_shard(spec, ctx, inputs)
    result.node_id = ray.get_runtime_context().get_node_id()
    result.fetched_inputs = fetched
    return result


def call(module: str, name: str, *args: Any) -> Any:  # Any: whatever the named function takes and returns
    """``module.name(*args)`` on this worker, after the cap: the run's other tasks (the day's
    aggregates, the flagged merge) name their function instead of pickling it, which
    would import its module, and Polars with it, before the task could cap the pool."""
    cap_threads()
    return getattr(import_module(module), name)(*args)
