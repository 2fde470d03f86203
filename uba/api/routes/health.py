"""Liveness and readiness: never behind the API key, never touching the model files."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from uba.api.deps import RuntimeDep, is_authenticated, redact_paths
from uba.api.schemas import Health, Readiness

router = APIRouter(tags=["health"])


@router.get("/health", response_model=Health, summary="Liveness: the process answers")
async def health() -> Health:
    return Health()


@router.get(
    "/ready", response_model=Readiness, summary="Readiness: a model and baselines are loaded",
    responses={503: {"model": Readiness, "description": "Not ready, with the reason (paths shown only "
                     "to a caller with a valid X-API-Key)"}},
)
async def ready(request: Request, runtime: RuntimeDep) -> Readiness | JSONResponse:
    state = runtime.holder.current
    if state is None:
        reason = runtime.holder.problem
        if reason and not is_authenticated(request, runtime):
            reason = redact_paths(reason, runtime)
        body = Readiness(ready=False, reason=reason)
        return JSONResponse(status_code=503, content=body.model_dump(mode="json"))
    return Readiness(ready=True, model_version=state.version, baseline_as_of=state.baselines.as_of)
