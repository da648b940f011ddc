"""Server-sent events through sse-starlette: one JSON object per ``data:`` line, keep-alive pings.

A stream that is quiet for ``keepalive_s`` (a generation without partial images, a slow
first token) gets an SSE comment line, which clients ignore and proxies with idle timeouts
count as traffic. Errors after the headers go out as ``error`` events.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from sse_starlette import EventSourceResponse, ServerSentEvent

from diptych.engine.errors import EngineError
from diptych.server.errors import APIError, api_error_from, error_body

logger = logging.getLogger(__name__)

# OpenAI's streams end each line with a bare newline; sse-starlette defaults to CRLF.
_SEPARATOR = "\n"


def sse_event(payload: dict[str, Any] | str, event: str | None = None) -> ServerSentEvent:
    data = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"))
    return ServerSentEvent(data=data, event=event, sep=_SEPARATOR)


def error_event(exc: BaseException) -> ServerSentEvent:
    if isinstance(exc, EngineError):
        exc = api_error_from(exc)
    if isinstance(exc, APIError):
        return sse_event(error_body(exc.status, exc.message, param=exc.param, code=exc.code), event="error")
    logger.exception("error while streaming", exc_info=exc)
    return sse_event(error_body(500, "internal server error"), event="error")


def _ping() -> ServerSentEvent:
    return ServerSentEvent(comment="keep-alive", sep=_SEPARATOR)


def sse_response(
    events: AsyncIterator[ServerSentEvent],
    *,
    keepalive_s: float,
    on_close: Callable[[], Awaitable[None]] | None = None,
) -> EventSourceResponse:
    """Stream ``events``; an error mid-stream becomes an ``error`` event, and the source is always closed."""

    async def body() -> AsyncIterator[ServerSentEvent]:
        try:
            async for event in events:
                yield event
        except Exception as exc:  # after the headers, a status can no longer be sent
            yield error_event(exc)
        finally:
            await events.aclose()  # type: ignore[attr-defined]
            if on_close is not None:
                await on_close()

    # sse-starlette sets Cache-Control (no-store) and X-Accel-Buffering (no) itself.
    return EventSourceResponse(
        body(),
        ping=keepalive_s,
        ping_message_factory=_ping,
        sep=_SEPARATOR,
    )
