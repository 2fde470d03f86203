"""Typed dependencies shared by the routers."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status

from uba.api.batcher import ScoringBatcher
from uba.api.metrics import ApiMetrics
from uba.api.risk import RiskHolder
from uba.api.schemas import ApiModels
from uba.api.state import ModelHolder, ModelState
from uba.api.workers import WorkerGroup
from uba.settings import Settings


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


async def get_runtime(request: Request) -> Runtime:
    return request.app.state.runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


async def get_model_state(request: Request, runtime: RuntimeDep) -> ModelState:
    """The state this request will use from start to end, even if a reload swaps it meanwhile."""
    return current_state(runtime, request)


def current_state(runtime: Runtime, request: Request) -> ModelState:
    """The served state, or 503 naming why there is none: file-system paths only for a
    caller with a valid key, as ``/ready`` shows them (on an open API, nobody has one)."""
    state = runtime.holder.current
    if state is None:
        from uba.api.routes.health import is_authenticated, redact_paths

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
