"""POST /feedback: analysts mark flagged events benign or malicious.

Stored exactly like ``uba-batch feedback`` (``uba.alerting.risk.record_verdicts``): one
append-only Parquet part per request under ``<data-dir>/feedback/``, all items or none,
latest label per event wins; the entity risk days a late verdict changes are marked stale
before it is stored. No model is needed, so this works before the first reload.
The body is bounded (``api.max_batch`` items, counted before any is validated) and
parsed off the event loop (``uba.api.body``). (No ``from __future__ import
annotations``: FastAPI must see the real classes.)
"""

from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, status
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel

from uba.alerting.feedback import pending_feedback
from uba.alerting.risk import VerdictsRecorded, record_verdicts
from uba.api.body import JsonBody, request_body
from uba.api.deps import RuntimeDep, require_json, run_verdict_work
from uba.api.errors import BODY_ERRORS, OpenApiResponses
from uba.api.schemas import ApiModels, ErrorBody, FeedbackStored
from uba.errors import UserError
from uba.logs import get_logger

log = get_logger("api.feedback")

_ERRORS: OpenApiResponses = {
    **BODY_ERRORS,
    422: {"model": ErrorBody, "description": "Invalid item: the field, message and value"},
}


def store_items(data_dir: Path, output_dir: Path, items: list[BaseModel], max_id_length: int) -> VerdictsRecorded:
    """Dump and store the items, marking stale the risk days they change first (in the
    thread pool: up to api.max_batch of them); their event ids were checked by the model
    with the same rule and length."""
    pending = pending_feedback([item.model_dump() for item in items], "api", max_id_length=max_id_length)
    return record_verdicts(data_dir, output_dir, pending)


def build_router(models: ApiModels) -> APIRouter:
    router = APIRouter(tags=["feedback"])
    body_dep = JsonBody(models.feedback, models.feedback_values, "api.max_batch items")

    @router.post("/feedback", response_model=FeedbackStored, status_code=status.HTTP_201_CREATED,
                 dependencies=[Depends(require_json)], responses=_ERRORS,
                 openapi_extra=request_body(models.feedback.__name__),
                 summary="Store analyst labels (benign / malicious) for scored events")
    async def post_feedback(runtime: RuntimeDep, body: Annotated[BaseModel, Depends(body_dep)]) -> FeedbackStored:
        items = body.items  # type: ignore[attr-defined]  # a field of the model made from settings
        paths = runtime.settings.paths
        try:
            recorded = await run_verdict_work(runtime, store_items, paths.data_dir, paths.output_dir, items,
                                              runtime.settings.events.max_string_length)
        except UserError as exc:  # e.g. whitespace-only event_id: named by item
            raise HTTPException(status_code=status.HTTP_422_UNPROCESSABLE_CONTENT,
                                detail=[{"field": "items", "message": str(exc), "value": None}]) from exc
        if recorded.stale_days:  # late verdicts made the days they changed stale: the served stale flags
            try:
                await run_in_threadpool(runtime.risk.load, runtime.settings)
            except (OSError, UserError) as exc:  # stored and marked: the periodic check reloads
                log.warning("feedback stored and entity risk marked stale, but the served risk was not "
                            "reloaded: %s", exc)
        summary = recorded.summary
        return FeedbackStored(stored=summary.rows, benign=summary.benign, malicious=summary.malicious)

    return router
