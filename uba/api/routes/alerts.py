"""GET /alerts and PATCH /alerts/{alert_id}: the triage lifecycle over HTTP.

The same library as ``uba-batch alerts`` (``uba.alerting.triage``): the same statuses,
the same append-only triage table, a close's verdict stored in the same feedback
store. Alerts are read from ``paths.output_dir``; no model is needed. (No ``from
__future__ import annotations``: FastAPI must see the real classes.)
"""

from datetime import date, datetime
from pathlib import Path
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, HTTPException, Query, Response, status
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict, Field

from uba.alerting import triage
from uba.alerting.formats import json_ready
from uba.alerting.records import DayNotScoredError
from uba.api.body import JsonBody, request_body
from uba.api.deps import Runtime, RuntimeDep, require_json, run_verdict_work
from uba.api.errors import BODY_ERRORS, OpenApiResponses
from uba.api.routes.predict import json_response
from uba.api.schemas import AnalystNote, CalendarDate, ErrorBody, FeedbackAnalyst
from uba.errors import UserError
from uba.io import CorruptPartError

STATUS_ACTIONS = {"acknowledged": "ack", "closed": "close", "open": "reopen"}
TYPES = {"event": "alerts", "user_day": "user-days", "risk": "risk", "all": "all"}


class AlertUpdate(BaseModel):
    """A triage action: the status to move to, and for a close the verdict."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    status: Literal["acknowledged", "closed", "open"]
    verdict: Literal["benign", "malicious"] | None = None
    note: AnalystNote | None = None
    analyst: FeedbackAnalyst | None = None
    suppress_similar: bool = False


class AlertUpdated(BaseModel):
    alert_id: str
    status: str
    verdict: str | None
    feedback_id: str | None
    suppression_rule: str | None


class AlertItem(BaseModel):
    """One listed alert: the canonical record (``uba.alerting.records.RECORD_SCHEMA``, as
    ``uba-batch export --format jsonl`` and ``alerts list --format jsonl`` write it), its
    triage status and the verdict in effect (``uba.alerting.triage``)."""

    model_config = ConfigDict(extra="forbid")
    alert_id: str = Field(description="stable id of the finding (uba-...)")
    alert_type: Literal["event", "user_day", "risk"]
    user_id: str
    time: datetime = Field(description="the event's time; a user-day or risk alert: its day at 00:00Z")
    event_date: date
    event_id: str | None = Field(description="the flagged event (event alerts only)")
    score: float = Field(description="anomaly score, day score or risk score (0-100), by alert_type")
    threshold: float | None = Field(description="the cut the score was over")
    severity: Literal["low", "medium", "high", "critical"]
    reasons: list[str] | None
    reason_kinds: list[str] | None
    model_version: str | None
    run_id: str
    run_ref: str = Field(description="the run manifest that found it: runs/event_date=D/manifest.json#run=ID")
    status: Literal["open", "acknowledged", "closed"]
    verdict: Literal["benign", "malicious"] | None = Field(description="the verdict in effect, however given")
    verdict_source: str | None = Field(description="where the verdict came from: api, csv:<file>, triage:<alert id>")
    verdict_at: datetime | None
    note: str | None = Field(description="the latest triage action's note")
    analyst: str | None = Field(description="the latest triage action's analyst")
    updated_at: datetime | None = Field(description="when the latest triage action was recorded")


class UnreadableDay(BaseModel):
    """A scored day skipped because its published files do not read."""

    model_config = ConfigDict(extra="forbid")
    event_date: date
    problem: str


class AlertList(BaseModel):
    """The answer of GET /alerts (built as plain JSON by the route; this documents it)."""

    model_config = ConfigDict(extra="forbid")
    count: int = Field(ge=0, description="alerts matching, before `limit`")
    days: list[date] = Field(description="the scored days searched, newest first")
    alerts: list[AlertItem] = Field(description="at most `limit` of them, newest day first")
    unreadable_days: list[UnreadableDay] = Field(description="days skipped; empty when every day read")


_FORBIDDEN: OpenApiResponses = {
    403: {"model": ErrorBody, "description": "The server has no API keys configured: triage is never open"},
}
_ERRORS: OpenApiResponses = {
    **BODY_ERRORS, **_FORBIDDEN,
    404: {"model": ErrorBody, "description": "No scored day holds this alert id"},
    409: {"model": ErrorBody, "description": "The alert's status does not allow this change, or the alert is "
                                             "on no readable day and some scored days do not read (named)"},
    422: {"model": ErrorBody, "description": "Invalid field: the field, message and value"},
}


def _listed(runtime: Runtime, day: date | None, days: int, statuses: tuple[str, ...], kind: str,
            limit: int) -> dict[str, object]:
    paths = runtime.settings.paths
    output_dir = Path(paths.output_dir)
    chosen = [day] if day is not None else triage.scored_days(output_dir)[:days]
    listed = triage.list_alerts(output_dir, Path(paths.data_dir), chosen, statuses, TYPES[kind])
    return {"count": listed.alerts.height, "days": [d.isoformat() for d in chosen],
            "alerts": [json_ready(alert) for alert in listed.alerts.head(limit).to_dicts()],
            "unreadable_days": [{"event_date": d.isoformat(), "problem": problem}
                                for d, problem in sorted(listed.unreadable.items())]}


def _update(runtime: Runtime, alert_id: str, update: AlertUpdate) -> triage.TriageResult:
    paths = runtime.settings.paths
    return triage.apply_action(
        Path(paths.output_dir), Path(paths.data_dir), alert_id, STATUS_ACTIONS[update.status],
        verdict=update.verdict, note=update.note, analyst=update.analyst,
        suppress_similar=update.suppress_similar, max_id_length=runtime.settings.events.max_string_length)


def _http_error(exc: UserError, field_hint: str = "body") -> HTTPException:
    if isinstance(exc, triage.AlertNotFoundError):
        return HTTPException(status.HTTP_404_NOT_FOUND, detail=str(exc))
    if isinstance(exc, DayNotScoredError):
        # the query is well formed; the day has no alerts to list. Said without the
        # server's output path, which the batch CLI's message names for its operator
        return HTTPException(status.HTTP_404_NOT_FOUND,
                             detail=f"{exc.day.isoformat()} is not scored: no run of that date is published")
    if isinstance(exc, CorruptPartError):
        # the server's own files (a triage or feedback part) do not read: not the request's
        # fault, so no 422 blaming a query parameter; 503 naming the part, as /ready would
        return HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, detail=str(exc))
    if isinstance(exc, triage.TransitionError | triage.UnreadableDaysError):
        # 409, not 404: the alert may be on a day that does not read; a client that takes a
        # 404 as "no such alert" must not drop it (docs/api.md)
        return HTTPException(status.HTTP_409_CONFLICT, detail=str(exc))
    named = str(exc).split(":", 1)[0]
    field = named if named in AlertUpdate.model_fields else field_hint
    return HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT,
                         detail=[{"field": field, "message": str(exc), "value": None}])


def build_router() -> APIRouter:
    router = APIRouter(tags=["alerts"])
    body_dep = JsonBody(AlertUpdate, 64, "1 alert update")

    @router.get("/alerts", response_model=AlertList,
                summary="Alerts of scored days by triage status, newest day first",
                responses={**_FORBIDDEN,
                           404: {"model": ErrorBody, "description": "`date` names a day that was never scored"},
                           422: {"model": ErrorBody, "description": "Invalid query parameter"}})
    async def get_alerts(
        runtime: RuntimeDep,
        day: Annotated[CalendarDate | None, Query(alias="date", description="Only this scored day (YYYY-MM-DD)")] = None,
        days: Annotated[int, Query(ge=1, le=3650, description="The newest N scored days")] = 7,
        alert_status: Annotated[Literal["open", "acknowledged", "closed", "all"], Query(alias="status")] = "open",
        kind: Annotated[Literal["event", "user_day", "risk", "all"], Query(alias="type")] = "all",
        limit: Annotated[int, Query(ge=0, le=10_000)] = 100,
    ) -> Response:
        statuses = triage.STATUSES if alert_status == "all" else (alert_status,)
        try:
            listed = await run_in_threadpool(_listed, runtime, day, days, statuses, kind, limit)
        except UserError as exc:  # e.g. a date that was never scored
            raise _http_error(exc, "date" if day is not None else "days") from exc
        return json_response(listed)

    @router.patch("/alerts/{alert_id}", response_model=AlertUpdated, dependencies=[Depends(require_json)],
                  responses=_ERRORS, openapi_extra=request_body(AlertUpdate.__name__),
                  summary="Acknowledge, close (with a verdict) or reopen an alert")
    async def patch_alert(runtime: RuntimeDep, alert_id: str,
                          update: Annotated[AlertUpdate, Depends(body_dep)]) -> AlertUpdated:
        try:
            result = await run_verdict_work(runtime, _update, runtime, alert_id, update)
        except UserError as exc:
            raise _http_error(exc) from exc
        if result.stale_days:  # GET /users/{id}/risk says so at once, not after the next reload
            await run_in_threadpool(runtime.risk.load, runtime.settings)
        return AlertUpdated(alert_id=result.alert_id, status=result.status, verdict=result.verdict,
                            feedback_id=result.feedback_id, suppression_rule=result.suppression_rule)

    return router
