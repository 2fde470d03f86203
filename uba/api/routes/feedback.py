"""POST /feedback: analysts mark flagged events benign or malicious.

Stored exactly like ``uba-batch feedback`` (``uba.alerting.feedback.record_feedback``): one
append-only Parquet part per request under ``<data-dir>/feedback/``, all items or none,
latest label per event wins. No model is needed, so this works before the first reload.
The body is bounded (``api.max_batch`` items, counted before any is validated) and
parsed off the event loop (``uba.api.body``). (No ``from __future__ import
annotations``: FastAPI must see the real classes.)
"""

from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, status
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel

from uba.alerting.feedback import FeedbackSummary, record_feedback
from uba.alerting.risk import mark_stale_after_feedback
from uba.api.body import JsonBody, request_body
from uba.api.deps import RuntimeDep, require_json
from uba.api.errors import BODY_ERRORS, OpenApiResponses
from uba.api.schemas import ApiModels, ErrorBody, FeedbackStored
from uba.errors import UserError
from uba.logs import get_logger

log = get_logger("api.feedback")

_ERRORS: OpenApiResponses = {
    **BODY_ERRORS,
    422: {"model": ErrorBody, "description": "Invalid item: the field, message and value"},
}


def store_items(data_dir: Path, items: list[BaseModel], max_id_length: int) -> FeedbackSummary:
    """Dump and store the items (in the thread pool: up to api.max_batch of them); their
    event ids were checked by the model with the same rule and length."""
    return record_feedback(data_dir, [item.model_dump() for item in items], "api", max_id_length=max_id_length)


def build_router(models: ApiModels) -> APIRouter:
    router = APIRouter(tags=["feedback"])
    body_dep = JsonBody(models.feedback, models.feedback_values, "api.max_batch items")

    @router.post("/feedback", response_model=FeedbackStored, status_code=status.HTTP_201_CREATED,
                 dependencies=[Depends(require_json)], responses=_ERRORS,
                 openapi_extra=request_body(models.feedback.__name__),
                 summary="Store analyst labels (benign / malicious) for scored events")
    async def post_feedback(runtime: RuntimeDep, body: Annotated[BaseModel, Depends(body_dep)]) -> FeedbackStored:
        items = body.items  # type: ignore[attr-defined]  # a field of the model made from settings
        try:
            summary = await run_in_threadpool(store_items, runtime.settings.paths.data_dir, items,
                                              runtime.settings.events.max_string_length)
        except UserError as exc:  # e.g. whitespace-only event_id: named by item
            raise HTTPException(status_code=status.HTTP_422_UNPROCESSABLE_CONTENT,
                                detail=[{"field": "items", "message": str(exc), "value": None}]) from exc
        if summary.benign_ids or summary.unbenign_ids:  # late verdicts make the days they changed stale
            try:
                if await run_in_threadpool(mark_stale_after_feedback, runtime.settings.paths.output_dir, summary):
                    await run_in_threadpool(runtime.risk.load, runtime.settings)  # the served stale flags
            except (OSError, UserError) as exc:  # stored already: the verdict counts at the next re-score
                log.warning("feedback stored, but entity risk could not be marked stale: %s", exc)
        return FeedbackStored(stored=summary.rows, benign=summary.benign, malicious=summary.malicious)

    return router
