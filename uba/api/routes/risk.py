"""GET /users/{user_id}/risk: a user's entity risk over the last days (docs/risk.md).

Behind the API key like the other read routes (/model). Served from the index loaded at
start and by each reload (``uba.api.risk``), never from disk per request. An unknown
user, or one never at risk in the window, gets 200 with an empty history: the risk
tables only list users with risk, so "unknown" and "no risk" cannot be told apart, and
a 404 would claim more than is known. (No ``from __future__ import annotations``:
FastAPI must see the real classes.)
"""

from typing import Annotated

from fastapi import APIRouter, Path

from uba.api.deps import RuntimeDep
from uba.api.schemas import ErrorBody, RiskDay, UserRisk


def build_router(max_id_length: int) -> APIRouter:
    """The route, its path id bounded by ``events.max_string_length`` in the schema itself,
    so the OpenAPI document says exactly which ids are answered (no id that long exists)."""
    router = APIRouter(tags=["risk"])

    @router.get("/users/{user_id}/risk", response_model=UserRisk,
                summary="A user's entity risk (0-100, level, contributions) over the last risk.history_days days",
                responses={422: {"model": ErrorBody, "description": "user_id empty or longer than "
                                                                  "events.max_string_length"},
                           404: {"model": ErrorBody, "description": "no such route: a user_id holding '/' "
                                                                  "(also percent-encoded) matches no path"}})
    async def user_risk(runtime: RuntimeDep,
                        user_id: Annotated[str, Path(min_length=1, max_length=max_id_length)]) -> UserRisk:
        index = runtime.risk.current
        history = [RiskDay.model_validate(row) for row in index.history(user_id)]  # other columns ignored
        return UserRisk(user_id=user_id, as_of=index.as_of, days=index.days, history=history)

    return router
