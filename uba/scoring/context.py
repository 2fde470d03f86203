"""What the tasks of a run receive by value, in a module without heavy imports.

A Ray worker unpickles a task's arguments before the task runs; these classes live apart
from ``shard`` (which imports Polars) so that unpickling them imports nothing that the
worker's thread cap (``ray_worker.cap_threads``) must come before.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from uba.features.aggregates import Categories

FAULT_ENV = {
    "shard_delay_sec": "UBA_FAULT_SHARD_DELAY_SEC",
    "pid_dir": "UBA_FAULT_PID_DIR",
    "pause_before_publish_sec": "UBA_FAULT_PAUSE_BEFORE_PUBLISH_SEC",
    "kill_at_publish_step": "UBA_FAULT_KILL_AT_PUBLISH_STEP",
    "stop_at_publish_step": "UBA_FAULT_STOP_AT_PUBLISH_STEP",
}


@dataclass(frozen=True)
class FaultInjection:
    """Test hooks that make a run slow at chosen points so a test can kill it there.

    ``shard_delay_sec`` sleeps in every shard task after it has written its PID into
    ``pid_dir`` (so a test can SIGKILL that worker); ``pause_before_publish_sec`` sleeps
    after the staging directory is complete and before it is swapped in;
    ``kill_at_publish_step`` makes the driver SIGKILL itself right after that step of
    publishing (one of ``PUBLISH_STEPS``), and ``stop_at_publish_step`` makes it SIGSTOP
    itself there, so a test can act at that exact point (a verdict given while the run holds
    the stale-marks lock between its check and its commit) and then resume it with SIGCONT.
    Never set in production; the CLI reads them
    from ``UBA_FAULT_*`` environment variables (and io reads ``UBA_FAULT_ENOSPC_AT``).
    """

    shard_delay_sec: float = 0.0
    pid_dir: str | None = None
    pause_before_publish_sec: float = 0.0
    kill_at_publish_step: str | None = None
    stop_at_publish_step: str | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> FaultInjection | None:
        env = os.environ if env is None else env
        if not any(env.get(var) for var in FAULT_ENV.values()):
            return None
        return cls(
            shard_delay_sec=float(env.get(FAULT_ENV["shard_delay_sec"]) or 0.0),
            pid_dir=env.get(FAULT_ENV["pid_dir"]) or None,
            pause_before_publish_sec=float(env.get(FAULT_ENV["pause_before_publish_sec"]) or 0.0),
            kill_at_publish_step=env.get(FAULT_ENV["kill_at_publish_step"]) or None,
            stop_at_publish_step=env.get(FAULT_ENV["stop_at_publish_step"]) or None,
        )


@dataclass(frozen=True)
class ShardContext:
    """The small, per-run description every shard task receives by value."""

    run_key: str
    day: date
    model_version: str
    max_reasons: int
    staging: str
    fault: FaultInjection | None = None


@dataclass(frozen=True)
class CategoryNames:
    """The device and event types a day's aggregates count, as plain names.

    The driver sends these to the aggregates task rather than the settings' events
    section: unpickling a pydantic model would import pydantic into the worker (about
    0.2 s of its start), and the task needs nothing else from it."""

    device_types: tuple[str, ...]
    event_types: tuple[str, ...]

    @classmethod
    def of(cls, categories: Categories) -> CategoryNames:
        return cls(tuple(categories.device_types), tuple(categories.event_types))
