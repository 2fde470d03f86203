"""Prometheus exposition. Left outside the API key so a scraper needs no secret."""

from __future__ import annotations

from fastapi import APIRouter, Response

from uba.api.deps import RuntimeDep

router = APIRouter(tags=["ops"])


@router.get("/metrics", summary="Prometheus metrics", response_class=Response,
            responses={200: {"content": {"text/plain": {}}}})
async def metrics(runtime: RuntimeDep) -> Response:
    body, content_type = runtime.metrics.render()
    return Response(content=body, media_type=content_type)
