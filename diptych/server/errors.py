"""OpenAI's error envelope, and the mapping from every failure to one status.

Schema violations answer 400 as OpenAI and vLLM do, not FastAPI's default 422.
"""

from __future__ import annotations

import logging
from http import HTTPStatus

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from diptych.engine.errors import (
    CapabilityError,
    DeadlineExceededError,
    EngineError,
    EngineUnavailableError,
    InvalidRequestError,
    QueueFullError,
)
from diptych.server.validation import validation_error

logger = logging.getLogger(__name__)

_TYPE_BY_STATUS = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    503: "service_unavailable_error",
    504: "timeout_error",
}


# Codes for the errors Starlette and FastAPI raise themselves: unknown route, wrong method,
# and a body they could not parse (nesting too deep for the JSON parser, a broken multipart).
_HTTP_CODES = {400: "invalid_request", 404: "not_found", 405: "method_not_allowed"}


class APIError(Exception):
    """An error raised at the HTTP edge (auth, unknown model, body too large...)."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.headers = headers or {}


def error_body(status: int, message: str, *, param: str | None = None, code: str | None = None) -> dict:
    return {
        "error": {
            "message": message,
            "type": _TYPE_BY_STATUS.get(status, "invalid_request_error" if status < 500 else "server_error"),
            "param": param,
            "code": code,
        }
    }


def error_response(
    status: int,
    message: str,
    *,
    param: str | None = None,
    code: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    return JSONResponse(error_body(status, message, param=param, code=code), status_code=status, headers=headers)


def engine_error_status(exc: EngineError) -> tuple[int, dict[str, str]]:
    """The HTTP status (and headers) an engine error maps to."""
    if isinstance(exc, QueueFullError):
        return 429, {"Retry-After": str(exc.retry_after_s)}
    if isinstance(exc, (InvalidRequestError, CapabilityError)):
        return 400, {}
    if isinstance(exc, DeadlineExceededError):
        return 504, {}
    if isinstance(exc, EngineUnavailableError):
        return 503, {"Retry-After": "5"}
    return 500, {}


def api_error_from(exc: EngineError) -> APIError:
    status, headers = engine_error_status(exc)
    message = exc.message if status < 500 or status in (503, 504) else "internal error while serving the request"
    return APIError(status, message, param=exc.param, code=exc.code, headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError) -> JSONResponse:
        return error_response(exc.status, exc.message, param=exc.param, code=exc.code, headers=exc.headers)

    @app.exception_handler(EngineError)
    async def _engine_error(_: Request, exc: EngineError) -> JSONResponse:
        api = api_error_from(exc)
        if api.status >= 500:
            logger.error("engine error: %s", exc.message)
        return error_response(api.status, api.message, param=api.param, code=api.code, headers=api.headers)

    @app.exception_handler(ClientDisconnect)
    async def _client_gone(_: Request, exc: ClientDisconnect) -> JSONResponse:
        # The client hung up while sending its body: nobody will read an answer, and nothing
        # failed here. 499 (nginx's "client closed request") keeps it out of the 5xx counts.
        logger.info("client disconnected before sending its whole request")
        return error_response(499, "client closed the request", code="client_closed")

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        message, param, code = validation_error(exc)
        return error_response(400, message, param=param, code=code)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        try:
            reason = HTTPStatus(exc.status_code).phrase
        except ValueError:
            reason = "error"
        message = exc.detail if isinstance(exc.detail, str) else reason
        return error_response(exc.status_code, message, code=_HTTP_CODES.get(exc.status_code),
                              headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled error", exc_info=exc)
        return error_response(500, "internal server error")
