"""The FastAPI application: factory, lifespan, middleware and routers in one place.

``create_app()`` does no I/O: it reads settings and wires objects. The model bundle,
baseline snapshot and API keys load in the lifespan, so importing this module (or
``uvicorn uba.api.app:app``) costs nothing and a missing model never stops the
process from starting (``/ready`` says why instead). The module attribute ``app`` is
built on first access, for ``uvicorn uba.api.app:app``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Literal

from fastapi import Depends, FastAPI
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.telemetry import TelemetryConfig
from starlette.exceptions import HTTPException as StarletteHTTPException

from uba import __version__
from uba.api.access_log import AccessLog
from uba.api.auth import load_api_keys, require_api_key, require_configured_key
from uba.api.batcher import ScoringBatcher
from uba.api.deps import Runtime
from uba.api.errors import (
    AUTH_ERRORS,
    http_error_handler,
    unexpected_error_handler,
    validation_error_handler,
)
from uba.api.metrics import ApiMetrics, MetricsMiddleware
from uba.api.middleware import BodyLimitMiddleware, RequestIdMiddleware
from uba.api.openapi import openapi_builder
from uba.api.reloader import PeriodicReloader, reload_runtime
from uba.api.routes import admin, alerts, feedback, health, metrics, model, predict, risk
from uba.api.schemas import build_models
from uba.api.state import settle_heap
from uba.api.workers import group_from_env
from uba.logs import LOGGER_NAME, configure_logging
from uba.settings import Settings, load_settings

API_TITLE = "UBA inference API"
# FastAPI's native OpenTelemetry asks the global providers whether anyone listens on every
# request (~5 us, 1-2% of a /predict); the product's metrics are Prometheus (/metrics).
NO_TELEMETRY: TelemetryConfig = {"tracing": False, "metrics": False, "logs": False}


def configure_worker_logging() -> None:
    """Worker processes spawned by uvicorn (``--workers`` > 1) and plain ``uvicorn
    uba.api.app:app`` runs never went through ``uba-api``'s logging setup; without it
    the access and info lines would be dropped. ``uba-api`` passes its choice on in
    ``UBA_LOG_FORMAT`` / ``UBA_LOG_LEVEL``."""
    if logging.getLogger(LOGGER_NAME).handlers:
        return
    fmt: Literal["text", "json"] = "json" if os.environ.get("UBA_LOG_FORMAT") == "json" else "text"
    configure_logging(fmt, os.environ.get("UBA_LOG_LEVEL", "INFO"))


def silence_uvicorn_access_log() -> None:
    """The app writes its own access line (with the request id, ``api.access_log``);
    uvicorn's CLI (``uvicorn uba.api.app:app``) writes one more per request unless told
    ``--no-access-log``, so every request was logged twice. ``uba-api`` already turns
    uvicorn's off."""
    logging.getLogger("uvicorn.access").disabled = True


def report_served_model(runtime: Runtime) -> None:
    """The model gauges for the state served now. A function of its own so the lifespan,
    which lives as long as the server, holds no reference to the first state: a local
    there kept the start-up bundle and snapshot alive through every reload."""
    state = runtime.holder.current
    runtime.metrics.set_model(
        state.version if state else None, state.baselines.as_of.isoformat() if state else None
    )


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    runtime: Runtime = app.state.runtime
    configure_worker_logging()
    silence_uvicorn_access_log()
    runtime.api_keys = load_api_keys(runtime.settings.api)
    await run_in_threadpool(runtime.holder.load_initial, runtime.settings)
    await run_in_threadpool(runtime.risk.load, runtime.settings)
    await run_in_threadpool(settle_heap)
    access_log: AccessLog | None = app.state.access_log
    if access_log is not None:
        access_log.start()
    report_served_model(runtime)
    await runtime.batcher.start()
    if runtime.group is not None:
        runtime.group.start(lambda: reload_runtime(runtime))
    reloader = None
    if runtime.settings.api.reload_interval_sec > 0:
        reloader = PeriodicReloader(runtime, runtime.settings.api.reload_interval_sec)
        reloader.start()
    try:
        yield
    finally:
        if reloader is not None:
            await reloader.stop()
        if runtime.group is not None:
            await runtime.group.stop()
        await runtime.batcher.stop()
        if access_log is not None:
            await access_log.stop()
        runtime.metrics.worker_stopped()
        if runtime.group is not None and runtime.group.orphaned():
            runtime.group.remove_if_last()


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build an app for ``settings`` (default: ``load_settings()``: UBA_CONFIG, UBA_* env)."""
    settings = settings or load_settings()
    models = build_models(settings.events, settings.api)
    api_metrics = ApiMetrics()
    batcher = ScoringBatcher(api_metrics, settings.threshold.max_reasons)
    runtime = Runtime(settings=settings, models=models, metrics=api_metrics, batcher=batcher,
                      group=group_from_env())
    app = FastAPI(title=API_TITLE, version=__version__, lifespan=lifespan, telemetry=NO_TELEMETRY,
                  description="Scores user activity events against per-user baselines "
                              "with the batch job's feature code and model bundle.")
    app.state.runtime = runtime
    access_log = (AccessLog(settings.api.access_log_buffer_bytes, settings.api.access_log_flush_sec)
                  if settings.api.access_log else None)
    app.state.access_log = access_log
    app.add_exception_handler(RequestValidationError, validation_error_handler)
    app.add_exception_handler(StarletteHTTPException, http_error_handler)
    app.add_exception_handler(Exception, unexpected_error_handler)

    # The key is the first dependency of every protected route: checked before the body
    # is read or validated (bodies are a later dependency, uba.api.body).
    # Routes are matched in order: the scoring routes first, as nearly every request is one.
    protected = [Depends(require_api_key)]
    app.include_router(predict.build_router(models), dependencies=protected, responses=AUTH_ERRORS)
    app.include_router(health.router)
    app.include_router(metrics.router)
    for router in (model.router, admin.router, feedback.build_router(models),
                   risk.build_router(settings.events.max_string_length)):
        app.include_router(router, dependencies=protected, responses=AUTH_ERRORS)
    app.include_router(alerts.build_router(), dependencies=[*protected, Depends(require_configured_key)],
                       responses=AUTH_ERRORS)
    app.openapi = openapi_builder(  # type: ignore[method-assign]  # FastAPI's documented way to replace it
        app, [models.event, models.batch, models.feedback, alerts.AlertUpdate], lambda: bool(runtime.api_keys))

    # Outermost first in the request path: metrics see every response, including 413s.
    app.add_middleware(BodyLimitMiddleware, limit=settings.api.max_body_bytes)
    app.add_middleware(MetricsMiddleware, metrics=runtime.metrics)
    app.add_middleware(RequestIdMiddleware, access_log=access_log)
    return app


def __getattr__(name: str) -> FastAPI:
    """``uba.api.app:app`` for uvicorn, built on first access rather than at import."""
    if name == "app":
        application = create_app()
        globals()["app"] = application
        return application
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
