"""Route labels of the API's Prometheus metrics (hardening): every route FastAPI
serves is counted under its own path, whatever the method; ``unmatched`` is for paths no
route has."""

from __future__ import annotations

import warnings

from fastapi import FastAPI

from uba.api.metrics import ApiMetrics, MetricsMiddleware

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient


def _counts(metrics: ApiMetrics) -> dict[str, float]:
    lines = metrics.render()[0].decode().splitlines()
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
            for line in lines if line.startswith("uba_api_requests_total{")}


def test_docs_and_openapi_get_their_own_route_label_for_any_method() -> None:
    """Before: POST /docs and POST /openapi.json (405), and even GET /docs, were counted
    as route="unmatched" (Starlette's plain routes do not put themselves in the scope),
    while POST /health got its own label."""
    metrics = ApiMetrics()
    app = FastAPI()

    @app.get("/health")
    def health() -> dict[str, str]:
        return {}

    app.add_middleware(MetricsMiddleware, metrics=metrics)
    client = TestClient(app)
    for method, path, status in [("post", "/docs", 405), ("post", "/openapi.json", 405), ("get", "/docs", 200),
                                 ("post", "/redoc", 405), ("post", "/health", 405), ("get", "/nope", 404)]:
        assert getattr(client, method)(path).status_code == status, (method, path)
    counts = _counts(metrics)
    for method, route, status in [("POST", "/docs", 405), ("POST", "/openapi.json", 405), ("GET", "/docs", 200),
                                  ("POST", "/redoc", 405), ("POST", "/health", 405), ("GET", "unmatched", 404)]:
        assert counts[f'uba_api_requests_total{{method="{method}",route="{route}",status="{status}"}}'] == 1, counts
    assert sum(v for k, v in counts.items() if 'route="unmatched"' in k) == 1  # only the path no route has
