"""Hot reload of the newest bundle and baseline snapshot."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, status
from fastapi.concurrency import run_in_threadpool

from uba.api.deps import RuntimeDep
from uba.api.schemas import ErrorBody, ReloadResult
from uba.errors import UserError
from uba.logs import get_logger

log = get_logger("api.admin")
router = APIRouter(prefix="/admin", tags=["admin"])


@router.post(
    "/reload", response_model=ReloadResult,
    summary="Load the newest bundle + baseline snapshot and swap them in atomically",
    responses={409: {"model": ErrorBody, "description": "The new bundle or snapshot was refused; "
                     "the previous one keeps serving"}},
)
async def reload(runtime: RuntimeDep) -> ReloadResult:
    try:
        previous, fresh = await run_in_threadpool(runtime.holder.reload, runtime.settings)
    except UserError as exc:
        runtime.metrics.reloads.labels(outcome="refused").inc()
        log.warning("reload refused: %s", exc)
        serving = runtime.holder.current
        kept = f"; still serving {serving.version}" if serving else "; no model is being served"
        raise HTTPException(status_code=status.HTTP_409_CONFLICT, detail=f"reload refused: {exc}{kept}") from exc
    runtime.metrics.reloads.labels(outcome="ok").inc()
    runtime.metrics.set_model(fresh.version, fresh.baselines.as_of.isoformat())
    changed = previous is None or (previous.version, previous.baselines.as_of) != (
        fresh.version, fresh.baselines.as_of)
    log.info("reloaded: model %s, baselines as of %s", fresh.version, fresh.baselines.as_of)
    return ReloadResult(
        reloaded=True, changed=changed, model_version=fresh.version,
        baseline_as_of=fresh.baselines.as_of,
        previous_model_version=previous.version if previous else None,
        previous_baseline_as_of=previous.baselines.as_of if previous else None,
    )
