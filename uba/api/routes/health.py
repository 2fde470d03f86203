"""Liveness and readiness: never behind the API key, never touching the model files."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from uba.api.deps import RuntimeDep
from uba.api.schemas import Health, Readiness

router = APIRouter(tags=["health"])


@router.get("/health", response_model=Health, summary="Liveness: the process answers")
async def health() -> Health:
    return Health()


@router.get(
    "/ready", response_model=Readiness, summary="Readiness: a model and baselines are loaded",
    responses={503: {"model": Readiness, "description": "Not ready, with the reason"}},
)
async def ready(runtime: RuntimeDep) -> Readiness | JSONResponse:
    state = runtime.holder.current
    if state is None:
        body = Readiness(ready=False, reason=runtime.holder.problem)
        return JSONResponse(status_code=503, content=body.model_dump(mode="json"))
    return Readiness(ready=True, model_version=state.version, baseline_as_of=state.baselines.as_of)
