"""Liveness and readiness: never behind the API key, never touching the model files."""

from __future__ import annotations

import os
import re

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from uba.api.auth import API_KEY_HEADER, key_is_valid
from uba.api.deps import Runtime, RuntimeDep
from uba.api.schemas import Health, Readiness

router = APIRouter(tags=["health"])
_ABSOLUTE_PATH = re.compile(r"(?<![\w.~>-])/[^\s:,;'\"()]+")


@router.get("/health", response_model=Health, summary="Liveness: the process answers")
async def health() -> Health:
    return Health()


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
