"""The product's app with the loaded state moved out of the cyclic garbage collector's
reach: a what-if for ``api_latency.py``, not a way to run the product.

``create_app`` wraps ``uba.api.app:create_app``: after the app's own lifespan start-up
(bundle, snapshot, compiled baselines loaded) it runs ``gc.collect()`` and
``gc.freeze()``, so later full (generation 2) collections no longer walk the hundreds
of thousands of long-lived objects loaded at start. Everything else is the product,
unchanged. ``api_latency.py`` serves it with uvicorn next to ``uba-api`` to show, in
the same run, how much of the tail at 16 connections is collector pauses.

    python -m uvicorn --factory --app-dir benchmarks gc_frozen_app:create_app --port 8012
"""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from uba.api.app import create_app as product_app


def create_app() -> Any:
    app = product_app()
    inner = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(application: Any) -> AsyncIterator[None]:
        async with inner(application):
            gc.collect()
            gc.freeze()
            yield

    app.router.lifespan_context = lifespan
    return app
