"""GET /users/{user_id}/risk: a user's entity risk over the last days (docs/risk.md).

Behind the API key like the other read routes (/model). Served from the index loaded at
start and by each reload (``uba.api.risk``), never from disk per request. An unknown
user, or one never at risk in the window, gets 200 with an empty history: the risk
tables only list users with risk, so "unknown" and "no risk" cannot be told apart, and
a 404 would claim more than is known. (No ``from __future__ import annotations``:
FastAPI must see the real classes.)
"""

from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Request, status

from uba.api.deps import RuntimeDep
from uba.api.schemas import ErrorBody, RiskDay, UserRisk

router = APIRouter(tags=["risk"])
# The schema's bound on the path's id: a longer request line would be refused by the HTTP
# server itself (an answer the schema cannot declare); events.max_string_length is checked too.
MAX_PATH_ID = 1024


@router.get("/users/{user_id}/risk", response_model=UserRisk,
            summary="A user's entity risk (0-100, level, contributions) over the last risk.history_days days",
            responses={422: {"model": ErrorBody, "description": "user_id too long"},
                       404: {"model": ErrorBody, "description": "no such route: a user_id holding '/' "
                                                              "(also percent-encoded) matches no path"}})
async def user_risk(request: Request, runtime: RuntimeDep,
                    user_id: Annotated[str, Path(min_length=1, max_length=MAX_PATH_ID)]) -> UserRisk:
    if len(user_id) > runtime.settings.events.max_string_length:
        raise HTTPException(status_code=status.HTTP_422_UNPROCESSABLE_CONTENT,
                            detail=[{"field": "user_id", "message": "longer than events.max_string_length",
                                     "value": user_id[:100]}])
    index = runtime.risk.current
    history = [RiskDay(**{k: row[k] for k in RiskDay.model_fields if k in row}) for row in index.history(user_id)]
    return UserRisk(user_id=user_id, as_of=index.as_of, days=index.days, history=history)
