"""POST /feedback: analysts mark flagged events benign or malicious.

Stored exactly like ``uba-batch feedback`` (``uba.feedback.record_feedback``): one
append-only Parquet part per request under ``<data-dir>/feedback/``, all items or none,
latest label per event wins. No model is needed, so this works before the first reload.
(No ``from __future__ import annotations``: FastAPI must see the real classes.)
"""

from typing import Any, Literal

from fastapi import APIRouter, Depends, HTTPException, status
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict, Field

from uba.api.deps import RuntimeDep, require_json
from uba.api.schemas import ErrorBody
from uba.errors import UserError
from uba.feedback import record_feedback

router = APIRouter(tags=["feedback"])


class FeedbackItem(BaseModel):
    model_config = ConfigDict(extra="forbid")

    event_id: str = Field(min_length=1, max_length=256, description="event_id of a scored event")
    label: Literal["benign", "malicious"]
    analyst: str | None = Field(default=None, max_length=256)
    note: str | None = Field(default=None, max_length=2000)


class FeedbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    items: list[FeedbackItem] = Field(min_length=1, max_length=100_000)


class FeedbackStored(BaseModel):
    stored: int
    benign: int
    malicious: int


_ERRORS: dict[int | str, dict[str, Any]] = {
    413: {"model": ErrorBody, "description": "More items than api.max_batch"},
    415: {"model": ErrorBody, "description": "Body is not application/json"},
    422: {"model": ErrorBody, "description": "Invalid item: the field, message and value"},
}


@router.post("/feedback", response_model=FeedbackStored, status_code=status.HTTP_201_CREATED,
             dependencies=[Depends(require_json)], responses=_ERRORS,
             summary="Store analyst labels (benign / malicious) for scored events")
async def post_feedback(body: FeedbackRequest, runtime: RuntimeDep) -> FeedbackStored:
    limit = runtime.settings.api.max_batch
    if len(body.items) > limit:
        raise HTTPException(status_code=status.HTTP_413_REQUEST_ENTITY_TOO_LARGE, detail=[{
            "field": "items", "message": f"at most {limit} items per request (api.max_batch)",
            "value": len(body.items)}])
    rows = [item.model_dump() for item in body.items]
    try:
        summary = await run_in_threadpool(record_feedback, runtime.settings.paths.data_dir, rows, "api")
    except UserError as exc:  # e.g. whitespace-only event_id: named by item
        raise HTTPException(status_code=status.HTTP_422_UNPROCESSABLE_ENTITY,
                            detail=[{"field": "items", "message": str(exc), "value": None}]) from exc
    return FeedbackStored(stored=summary.rows, benign=summary.benign, malicious=summary.malicious)
