"""OpenAI's error envelope as a schema, and the error responses each route declares in /openapi.json."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(BaseModel):
    error: ErrorDetail


_DESCRIPTIONS = {
    400: "Invalid request: a schema violation, a value past a limit, an undecodable image. `param` names the field.",
    401: "Missing or invalid API key (only when keys are configured).",
    404: "Unknown model.",
    413: "Request body over the size limit.",
    415: "Wrong content type.",
    429: "Queue full; retry after `Retry-After` seconds.",
    503: "Engine unavailable, or the server is shutting down.",
    504: "The request ran past its deadline.",
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """``responses=`` for a route: the listed statuses, and every other error status, as the envelope.

    Declaring ``default`` also keeps FastAPI from documenting its 422, which this server never sends.
    """
    responses: dict[int | str, dict[str, Any]] = {
        status: {"model": ErrorResponse, "description": _DESCRIPTIONS[status]} for status in statuses
    }
    responses["default"] = {"model": ErrorResponse, "description": "Any other error, in the same envelope."}
    return responses
