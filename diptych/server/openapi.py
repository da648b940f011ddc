"""The published /openapi.json, made to say what the server really does.

FastAPI derives most of it from the routes; what it cannot know is added here: the API-key
requirement (our key check is a plain dependency, not one of FastAPI's security classes)
and the 401 it answers without a key.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from diptych.server.schemas.errors import ErrorResponse

_OPEN_PATHS = frozenset({"/health"})  # answered without a key


def install_openapi(app: FastAPI, *, auth_required: bool) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, description=app.description,
                                 routes=app.routes)
            if auth_required:
                _declare_api_key(schema)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _declare_api_key(schema: dict[str, Any]) -> None:
    components = schema.setdefault("components", {})
    components.setdefault("securitySchemes", {})["apiKey"] = {
        "type": "http", "scheme": "bearer", "description": "One of the server's API keys.",
    }
    components.setdefault("schemas", {}).setdefault(ErrorResponse.__name__, {})
    for path, operations in schema.get("paths", {}).items():
        if path in _OPEN_PATHS:
            continue
        for operation in operations.values():
            operation["security"] = [{"apiKey": []}]
            operation["responses"]["401"] = {
                "description": "Missing or invalid API key.",
                "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{ErrorResponse.__name__}"}}},
            }
