"""GET /users/{user_id}/risk: a user's entity risk over the last days (docs/risk.md).

Behind the API key like the other read routes (/model). Served from the index loaded at
start and by each reload (``uba.api.risk``), never from disk per request. An unknown
user, or one never at risk in the window, gets 200 with an empty history: the risk
tables only list users with risk, so "unknown" and "no risk" cannot be told apart, and
a 404 would claim more than is known. (No ``from __future__ import annotations``:
FastAPI must see the real classes.)

A user id may hold '/' (Kerberos principals ``alice/admin@EXAMPLE.COM``: ingest takes them),
so the id is a ``path`` parameter: everything between ``/users/`` and the *last* ``/risk``,
after percent-decoding. A plain ``{user_id}`` matched no id holding '/', not even as
``%2F`` (the server matches the decoded path), and answered 404. The match is greedy, so
an id that itself ends in ``/risk`` is still the whole id (``/users/ops/risk/risk``).
"""

from typing import Annotated

from fastapi import APIRouter, Path

from uba.api.deps import RuntimeDep
from uba.api.schemas import ErrorBody, RiskDay, UserRisk

ID_ENCODING = ("The user id, percent-encoded as one path segment (RFC 3986; Python "
               "`urllib.parse.quote(user_id, safe='')`): `alice/admin@EXAMPLE.COM` is "
               "`alice%2Fadmin%40EXAMPLE.COM`. An unencoded '/' is taken too (the id is everything up to "
               "the last `/risk`), but clients and proxies may rewrite `.`, `..` and `//` segments.")

# no C0 control character or DEL: ingest stores no id holding one, and the router's match
# stops at a line break (such a path is no route: a 404 before this check could name the id)
ID_PATTERN = r"^[^\x00-\x1f\x7f]+$"


def build_router(max_id_length: int) -> APIRouter:
    """The route, its path id bounded by ``events.max_string_length`` in the schema itself,
    so the OpenAPI document says exactly which ids are answered (no id that long exists)."""
    router = APIRouter(tags=["risk"])

    @router.get("/users/{user_id:path}/risk", response_model=UserRisk,
                summary="A user's entity risk (0-100, level, contributions) over the last risk.history_days days",
                responses={404: {"model": ErrorBody, "description": "No such route: a path going on after "
                                                                  "`/risk`, or an id holding a line break"},
                           422: {"model": ErrorBody, "description": "user_id empty, longer than "
                                                                  "events.max_string_length, or holding a "
                                                                  "control character"}})
    async def user_risk(runtime: RuntimeDep,
                        user_id: Annotated[str, Path(min_length=1, max_length=max_id_length,
                                                     pattern=ID_PATTERN, description=ID_ENCODING)]) -> UserRisk:
        index = runtime.risk.current
        history = [RiskDay.model_validate(row) for row in index.history(user_id)]  # other columns ignored
        return UserRisk(user_id=user_id, as_of=index.as_of, days=index.days, history=history)

    return router
