"""Routes whose arguments are resolved by one plain function instead of FastAPI's solver.

FastAPI resolves a route's dependencies per request by walking their declared graph:
for ``/predict`` (API key, content type, model state, runtime, body) that walk cost
about 0.2 ms of the 0.55 ms the whole request took in process, more than the features,
the forest and the reasons together. A :func:`direct_route` keeps the route
as FastAPI declared it (path, summary, dependencies, request and response schemas in
``/openapi.json``) and, per request, calls its ``resolve`` function, which runs the
same checks in the same order (``uba.api.auth.authorize``, ``uba.api.deps.check_json``,
``uba.api.deps.current_state``, the body's ``JsonBody``), then the endpoint itself with
those arguments. The endpoint returns a ready :class:`~starlette.responses.Response`:
its JSON is built from plain values (``uba.api.answers``), so FastAPI's response-model
validation, which would check again what the endpoint just built, is not run either.

Errors raised while resolving are the same exceptions the dependencies raise, answered
by the app's handlers (401, 413, 415, 422, 503) exactly as on the other routes.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute

Resolver = Callable[[Request], Awaitable[dict[str, object]]]  # the endpoint's keyword arguments


def direct_route(resolve: Resolver) -> type[APIRoute]:
    """An ``APIRoute`` class whose requests call ``endpoint(**await resolve(request))``."""

    class DirectRoute(APIRoute):
        # APIRoute's own signature (a coroutine's send and yield types are Any in typeshed)
        def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
            endpoint = self.endpoint

            async def handle(request: Request) -> Response:
                response: Response = await endpoint(**await resolve(request))
                return response

            return handle

    return DirectRoute
