"""What is being served: model version, training window, threshold, features, snapshot."""

from __future__ import annotations

from fastapi import APIRouter

from uba.api.deps import ModelStateDep
from uba.api.schemas import ErrorBody, ModelInfo

router = APIRouter(tags=["model"])


@router.get("/model", response_model=ModelInfo, summary="The loaded model and baseline snapshot",
            responses={503: {"model": ErrorBody, "description": "No model loaded"}})
async def model_info(state: ModelStateDep) -> ModelInfo:
    return state.describe()
