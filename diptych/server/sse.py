"""Server-sent events: one JSON object per ``data:`` line; errors after the headers go out as events."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

from fastapi.responses import StreamingResponse

from diptych.engine.errors import EngineError
from diptych.server.errors import APIError, api_error_from, error_body

logger = logging.getLogger(__name__)


def sse_data(payload: dict | str, event: str | None = None) -> str:
    body = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"))
    prefix = f"event: {event}\n" if event else ""
    return f"{prefix}data: {body}\n\n"


def error_event(exc: BaseException) -> str:
    if isinstance(exc, EngineError):
        exc = api_error_from(exc)
    if isinstance(exc, APIError):
        return sse_data(error_body(exc.status, exc.message, param=exc.param, code=exc.code), event="error")
    logger.exception("error while streaming", exc_info=exc)
    return sse_data(error_body(500, "internal server error"), event="error")


def sse_response(
    events: AsyncIterator[str], *, on_close: Callable[[], Awaitable[None]] | None = None
) -> StreamingResponse:
    """Stream ``events``; an error mid-stream becomes an ``error`` event, and the source is always closed."""

    async def body() -> AsyncIterator[str]:
        try:
            async for chunk in events:
                yield chunk
        except Exception as exc:  # after the headers, a status can no longer be sent
            yield error_event(exc)
        finally:
            await events.aclose()  # type: ignore[attr-defined]
            if on_close is not None:
                await on_close()

    return StreamingResponse(
        body(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
