"""Stop a request's work when its client goes away, or when a draining server runs out of time.

Starlette cancels a *streaming* response's body when the client disconnects, but a plain
handler runs to the end. Once the body has been read, ``receive()`` only returns when the
client disconnects, so a watcher awaiting it can cancel the work, whose stream closing
aborts the engine request. During a graceful shutdown the same cancellation happens when
the drain timeout passes, and the client gets a 503 instead of nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine
from typing import Any, TypeVar

from fastapi import Request
from sse_starlette import EventSourceResponse

from diptych.server.errors import APIError
from diptych.server.shutdown import Drain

logger = logging.getLogger(__name__)

T = TypeVar("T")

CLIENT_CLOSED = 499  # nginx's status for "client closed request"; never seen by the client


async def cancel_on_disconnect(request: Request, work: Coroutine[Any, Any, T], drain: Drain | None = None) -> T:
    task = asyncio.ensure_future(work)

    async def wait_for_disconnect() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    watchers = {asyncio.ensure_future(wait_for_disconnect())}
    expired = None
    if drain is not None:
        expired = asyncio.ensure_future(drain.expired.wait())
        watchers.add(expired)
    try:
        await asyncio.wait({task, *watchers}, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            result = task.result()
            if drain is not None and isinstance(result, EventSourceResponse):
                result.body_iterator = drain.guard_stream(result.body_iterator)
            return result
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        if expired is not None and expired.done():
            logger.warning("request cancelled: the drain timeout passed")
            raise drain.shutdown_error()  # type: ignore[union-attr]
        logger.info("client disconnected; request cancelled")
        raise APIError(CLIENT_CLOSED, "client closed the request", code="client_closed")
    finally:
        for watcher in watchers:
            watcher.cancel()
        if not task.done():
            task.cancel()
