"""The OpenAPI document: FastAPI's, plus the request models it cannot see.

Request bodies are parsed by a dependency (``uba.api.body``), so FastAPI does not know
their models; the routes declare them by reference (``request_body``) and this module
adds those models' schemas to ``components.schemas``. Built on the first request for
``/openapi.json``, never at import.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from uba.schema import JsonValue

REF_TEMPLATE = "#/components/schemas/{model}"


def body_schemas(models: Sequence[type[BaseModel]]) -> dict[str, JsonValue]:
    """Validation-mode JSON schemas of ``models`` and everything they reference, by name."""
    _, top = models_json_schema([(m, "validation") for m in models], ref_template=REF_TEMPLATE)
    return dict(top.get("$defs", {}))


def drop_security(schema: dict[str, JsonValue]) -> None:
    """Operations of a server without keys require none: say so, rather than declare a
    key that is never checked."""
    paths = schema.get("paths", {})
    assert isinstance(paths, dict)  # an OpenAPI document's paths, operations and responses are objects
    for operations in paths.values():
        assert isinstance(operations, dict)
        for operation in operations.values():
            if isinstance(operation, dict):
                operation.pop("security", None)
                responses = operation.get("responses", {})
                assert isinstance(responses, dict)
                responses.pop("401", None)


def openapi_builder(app: FastAPI, models: Sequence[type[BaseModel]],
                    keys_configured: Callable[[], bool]) -> Callable[[], dict[str, JsonValue]]:
    """A replacement for ``app.openapi`` that also holds the request body models and
    declares the API key only when keys are configured (known once the lifespan ran)."""
    built: dict[bool, dict[str, JsonValue]] = {}

    def build() -> dict[str, JsonValue]:
        keyed = keys_configured()
        if keyed not in built:
            schema = get_openapi(title=app.title, version=app.version, description=app.description,
                                 routes=app.routes)
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            for name, definition in body_schemas(models).items():
                components.setdefault(name, definition)
            if not keyed:
                drop_security(schema)
            built[keyed] = schema
        return built[keyed]

    return build
