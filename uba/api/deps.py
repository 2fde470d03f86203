"""Typed dependencies shared by the routers."""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, TypeVar

from anyio import CapacityLimiter, to_thread
from fastapi import Depends, HTTPException, Request, status

from uba.api.auth import API_KEY_HEADER, key_is_valid
from uba.api.batcher import ScoringBatcher
from uba.api.metrics import ApiMetrics
from uba.api.model_state import ModelState
from uba.api.risk import RiskHolder
from uba.api.schemas import ApiModels
from uba.api.state import ModelHolder
from uba.api.workers import WorkerGroup
from uba.settings import Settings

T = TypeVar("T")
# Worker threads for storing verdicts (POST /feedback, PATCH /alerts), apart from the 40
# Starlette runs all other blocking work in: each waits for the runs' stale-marks lock
# (and a close for the triage table's lock), and they take turns there anyway.
VERDICT_THREADS = 4


@dataclass
class Runtime:
    """Per-app objects: built in ``create_app`` (no I/O), filled by the lifespan."""

    settings: Settings
    models: ApiModels
    metrics: ApiMetrics
    batcher: ScoringBatcher
    holder: ModelHolder = field(default_factory=ModelHolder)
    risk: RiskHolder = field(default_factory=RiskHolder)  # entity risk (GET /users/{id}/risk)
    api_keys: tuple[bytes, ...] = ()
    group: WorkerGroup | None = None  # the other workers of this server (uba.api.workers)
    # threads in which verdicts wait for their locks (run_verdict_work)
    verdict_threads: CapacityLimiter = field(default_factory=lambda: CapacityLimiter(VERDICT_THREADS))


async def run_verdict_work(runtime: Runtime, func: Callable[..., T], *args: object) -> T:
    """``func(*args)`` in one of the runtime's ``VERDICT_THREADS`` threads: storing a verdict
    waits for the runs' stale-marks lock, which a score run holds from its check to its
    commit. In Starlette's shared threads (``run_in_threadpool``), verdicts waiting there
    took all 40 once enough came in, and every route needing a thread (GET /alerts,
    /predict/batch, reloads) stalled until the lock was free (found by an attack). Beyond
    these threads, verdicts queue in the event loop."""
    return await to_thread.run_sync(functools.partial(func, *args), limiter=runtime.verdict_threads)


async def get_runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime  # Starlette's app.state is untyped
    return runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


async def get_model_state(request: Request, runtime: RuntimeDep) -> ModelState:
    """The state this request will use from start to end, even if a reload swaps it meanwhile."""
    return current_state(runtime, request)


def current_state(runtime: Runtime, request: Request) -> ModelState:
    """The served state, or 503 naming why there is none: file-system paths only for a
    caller with a valid key, as ``/ready`` shows them (on an open API, nobody has one)."""
    state = runtime.holder.current
    if state is None:
        problem = runtime.holder.problem
        if problem and not is_authenticated(request, runtime):
            problem = redact_paths(problem, runtime)
        raise HTTPException(
            status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
            detail=f"no model loaded: {problem}",
        )
    return state


ModelStateDep = Annotated[ModelState, Depends(get_model_state)]


async def require_json(request: Request) -> None:
    """415 for a body that does not claim to be JSON (FastAPI alone would answer 422)."""
    check_json(request)


def check_json(request: Request) -> None:
    """:func:`require_json`'s check, for routes that resolve their arguments themselves."""
    content_type = request.headers.get("content-type", "")
    media = content_type.split(";", 1)[0].strip().lower()
    if media != "application/json" and not media.endswith("+json"):
        raise HTTPException(
            status_code=status.HTTP_415_UNSUPPORTED_MEDIA_TYPE,
            detail=[{"field": "content-type", "message": "must be application/json",
                     "value": content_type[:100] or None}],
        )


_ABSOLUTE_PATH = re.compile(r"(?<![\w.~>-])/[^\s:,;'\"()]+")


def redact_paths(text: str, runtime: Runtime) -> str:
    """``text`` with the data and model directories named by role and any other absolute
    path cut to its last component: the file system layout is for operators (the server
    log has the whole reason), not for whoever can reach an unauthenticated probe."""
    paths = runtime.settings.paths
    for root, label in ((paths.model_dir, "<model-dir>"), (paths.data_dir, "<data-dir>")):
        for form in {os.path.abspath(root), str(root)}:
            if os.path.isabs(form) and form != "/":  # a relative root shows no layout ("data")
                text = text.replace(form, label)
    return _ABSOLUTE_PATH.sub(lambda m: ".../" + m.group(0).rstrip("/").rsplit("/", 1)[-1], text)


def is_authenticated(request: Request, runtime: Runtime) -> bool:
    """True only for a caller presenting a configured key (an open API has none)."""
    given = request.headers.get(API_KEY_HEADER)
    return bool(runtime.api_keys) and given is not None and key_is_valid(given, runtime.api_keys)
