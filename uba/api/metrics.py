"""Prometheus metrics, one registry per app.

A registry per app (not the process-global default) keeps two apps in one process,
as in the tests, from double-registering or mixing their counts. The route label is
the route template (``/predict``), never the raw path, so label cardinality stays fixed
whatever clients send.
"""

from __future__ import annotations

import contextlib
import os
import time
import warnings
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, multiprocess
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from starlette.requests import ClientDisconnect

from uba.api.workers import LIVE_GAUGE_FILE, METRICS_DIR_ENV, process_is_gone

# ASGI's own types (as Starlette declares them): scopes and messages are open dicts of any value
Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

CLIENT_CLOSED = 499  # nginx's code for "the client closed the connection before the answer"
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
UNMATCHED_ROUTE = "unmatched"


def forget_dead_workers(folder: str) -> None:
    """Drop the live gauges of workers that died without shutting down (SIGKILL, OOM,
    a crash; uvicorn starts a new worker under a new pid). Their files stay otherwise,
    so ``uba_api_model_info`` kept a series for the dead pid with what it served, also
    after every live worker reloaded, and ``uba_api_model_loaded`` kept its value in the
    minimum. Their counters stay: those requests did happen."""
    for name in os.listdir(folder):
        found = LIVE_GAUGE_FILE.fullmatch(name)
        if found and int(found[1]) != os.getpid() and process_is_gone(int(found[1])):
            # mark_process_dead's work, but another worker's scrape may remove it first
            with contextlib.suppress(FileNotFoundError):
                os.remove(os.path.join(folder, name))


class ApiMetrics:
    """The counters, histograms and gauges the service exports."""

    def __init__(self) -> None:
        # Several workers (uba.api.workers): prometheus_client keeps every value in files
        # of that folder, and /metrics adds up all workers' files.
        self.multiprocess_dir = os.environ.get(METRICS_DIR_ENV) or None
        self._served: tuple[str, str] | None = None  # model_info's labels now set to 1
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "uba_api_requests", "HTTP requests by route, method and status code.",
            ["route", "method", "status"], registry=self.registry,
        )
        self.latency = Histogram(
            "uba_api_request_duration_seconds", "Request latency by route and method.",
            ["route", "method"], buckets=LATENCY_BUCKETS, registry=self.registry,
        )
        self.events_scored = Counter(
            "uba_api_events_scored", "Events scored by /predict and /predict/batch.",
            ["known_user"], registry=self.registry,
        )
        self.anomalies = Counter(
            "uba_api_anomalies", "Scored events at or over the threshold.", registry=self.registry,
        )
        self.model_info = Gauge(
            "uba_api_model_info", "1 for the model version and baseline snapshot being served.",
            ["model_version", "baseline_as_of"], registry=self.registry,
            multiprocess_mode="liveall",  # one series per worker (a pid label): a lagging worker shows
        )
        self.model_loaded = Gauge(
            "uba_api_model_loaded", "1 when a model and baselines are loaded (in every worker).",
            registry=self.registry, multiprocess_mode="livemin",
        )
        self.reloads = Counter(
            "uba_api_reloads", "Reload attempts by outcome.", ["outcome"], registry=self.registry,
        )
        self._scored_children: dict[bool, Counter] = {}

    def record_scores(self, known_user: list[bool], anomalies: int) -> None:
        known = sum(known_user)
        if known:
            self._scored(True).inc(known)
        if len(known_user) - known:
            self._scored(False).inc(len(known_user) - known)
        if anomalies:
            self.anomalies.inc(anomalies)

    def _scored(self, known: bool) -> Counter:
        """``events_scored``'s child for ``known``, looked up once (``labels()`` takes a
        lock and builds its key on every call, ~2 us of every ``/predict``)."""
        child = self._scored_children.get(known)
        if child is None:
            child = self._scored_children[known] = self.events_scored.labels(
                known_user="true" if known else "false")
        return child

    def set_model(self, model_version: str | None, baseline_as_of: str | None) -> None:
        if self.multiprocess_dir and self._served is not None:  # a worker's file outlives clear(): zero it
            self.model_info.labels(*self._served).set(0)
        with warnings.catch_warnings():  # multiprocess mode warns that clear() leaves the files: zeroed above
            warnings.filterwarnings("ignore", "Clearing labels has not been implemented", UserWarning)
            self.model_info.clear()
        self._served = None
        if model_version is None:
            self.model_loaded.set(0)
            return
        self._served = (model_version, baseline_as_of or "")
        self.model_info.labels(*self._served).set(1)
        self.model_loaded.set(1)

    def render(self) -> tuple[bytes, str]:
        if self.multiprocess_dir is None:
            return generate_latest(self.registry), CONTENT_TYPE_LATEST
        forget_dead_workers(self.multiprocess_dir)
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=self.multiprocess_dir)  # type: ignore[no-untyped-call]  # prometheus_client.multiprocess is unannotated
        return generate_latest(registry), CONTENT_TYPE_LATEST

    def worker_stopped(self) -> None:
        """Drop this worker's live gauges from the group's sums (its counts stay counted)."""
        if self.multiprocess_dir:
            multiprocess.mark_process_dead(os.getpid(), self.multiprocess_dir)  # type: ignore[no-untyped-call]  # unannotated, as above


def final_status(sent: int | None, error: BaseException | None) -> int:
    """The outcome to count for a request: the status actually sent; else 499 when the
    client went away before an answer (the app returned without one, or reading the
    body failed on the disconnect); else 500 for an exception, which Starlette's error
    middleware answers as a 500 outside this one."""
    if sent is not None:
        return sent
    if error is None or isinstance(error, ClientDisconnect):
        return CLIENT_CLOSED
    return 500


def route_label(scope: Scope) -> str:
    """The route template of the request; ``unmatched`` only when no route has its path.

    FastAPI's own routes put themselves in the scope. The routes Starlette adds plainly
    (``/docs``, ``/openapi.json``, ``/redoc``) do not, so they are found by matching the
    router's routes again, a method mismatch (405) included: the label of ``POST /docs``
    is ``/docs``, as the label of ``POST /metrics`` is ``/metrics``. The template is written
    without its convertors (``path_format``): ``/users/{user_id}/risk``, as the OpenAPI
    document names it, not ``/users/{user_id:path}/risk``.
    """
    route = scope.get("route")
    path = _template(route)
    if path is not None:
        return path
    from starlette.routing import Match

    for candidate in getattr(scope.get("router"), "routes", ()):
        try:
            match, _ = candidate.matches(scope)
        except Exception:  # a route that cannot judge this scope is not its route
            continue
        path = _template(candidate)
        if match is not Match.NONE and path is not None:
            return path
    return UNMATCHED_ROUTE


def _template(route: object) -> str | None:
    """A route's path template without convertors, None for what is not a route."""
    path = getattr(route, "path_format", None) or getattr(route, "path", None)
    return path if isinstance(path, str) else None


class MetricsMiddleware:
    """Times every HTTP request and counts it by route template and final status."""

    def __init__(self, app: ASGIApp, metrics: ApiMetrics) -> None:
        self.app = app
        self.metrics = metrics
        # The labelled children, looked up once per label set: ``labels()`` takes a lock
        # and builds a key each call (~6 us, three per request). Route templates, methods
        # and statuses are few, so these stay small.
        self._latency: dict[tuple[str, str], Histogram] = {}
        self._requests: dict[tuple[str, str, int], Counter] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        sent: int | None = None
        error: BaseException | None = None
        started = time.perf_counter()

        async def send_with_status(message: Message) -> None:
            nonlocal sent
            if message["type"] == "http.response.start":
                sent = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_with_status)
        except BaseException as exc:
            error = exc
            raise
        finally:
            self._count(route_label(scope), scope.get("method", ""), final_status(sent, error),
                        time.perf_counter() - started)

    def _count(self, route: str, method: str, status: int, seconds: float) -> None:
        latency = self._latency.get((route, method))
        if latency is None:
            latency = self._latency[(route, method)] = self.metrics.latency.labels(route=route, method=method)
        latency.observe(seconds)
        requests = self._requests.get((route, method, status))
        if requests is None:
            requests = self._requests[(route, method, status)] = self.metrics.requests.labels(
                route=route, method=method, status=str(status))
        requests.inc()
