"""Hot reload of the newest bundle and baseline snapshot."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, status

from uba.api.deps import RuntimeDep
from uba.api.errors import BODY_LIMIT_ERROR
from uba.api.reloader import reload_runtime, served_key
from uba.api.schemas import ErrorBody, ReloadResult
from uba.errors import UserError

MAX_DETAIL_CHARS = 300

router = APIRouter(prefix="/admin", tags=["admin"])


def short_reason(exc: Exception) -> str:
    """The first line of a refusal, cut to MAX_DETAIL_CHARS: a Polars error can carry a
    20 KB query plan, which belongs in the server log (``reload_runtime`` logs it whole),
    not in every client's answer."""
    lines = str(exc).strip().splitlines()
    first = lines[0].strip() if lines else type(exc).__name__
    if len(first) > MAX_DETAIL_CHARS or len(lines) > 1:
        return first[:MAX_DETAIL_CHARS].rstrip() + " ... (full reason in the server log)"
    return first


@router.post(
    "/reload", response_model=ReloadResult,
    summary="Load the newest bundle + baseline snapshot + suppression rules and swap them in atomically",
    responses={409: {"model": ErrorBody, "description": "The new bundle or snapshot was refused; "
                     "the previous one keeps serving"}, **BODY_LIMIT_ERROR},
)
async def reload(runtime: RuntimeDep) -> ReloadResult:
    """Reloads this worker, then (``uba-api --workers N``) asks the others to, which they do
    within about a second (``uba.api.workers``). ``changed`` compares with what was served when this call arrived, not with what a
    concurrent (e.g. periodic) reload swapped in while this one waited for the lock."""
    previous = runtime.holder.current
    try:
        _, fresh = await reload_runtime(runtime)
    except UserError as exc:
        if runtime.group is not None:  # the other workers try the same pair (and keep serving if refused)
            runtime.group.announce_reload()
        serving = runtime.holder.current
        kept = f"; still serving {serving.version}" if serving else "; no model is being served"
        raise HTTPException(status_code=status.HTTP_409_CONFLICT,
                            detail=f"reload refused: {short_reason(exc)}{kept}") from exc
    if runtime.group is not None:  # every other worker of this server reloads within about a second
        runtime.group.announce_reload()
    changed = previous is None or served_key(previous) != served_key(fresh)
    return ReloadResult(
        reloaded=True, changed=changed, model_version=fresh.version,
        baseline_as_of=fresh.baselines.as_of,
        previous_model_version=previous.version if previous else None,
        previous_baseline_as_of=previous.baselines.as_of if previous else None,
    )
