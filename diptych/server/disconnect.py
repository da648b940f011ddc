"""Stop a request's work when its client goes away.

Starlette cancels a *streaming* response's body when the client disconnects, but a plain
handler runs to the end. Once the body has been read, ``receive()`` only returns when the
client disconnects, so a watcher awaiting it can cancel the work, whose stream closing
aborts the engine request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine
from typing import Any, TypeVar

from fastapi import Request

from diptych.server.errors import APIError

logger = logging.getLogger(__name__)

T = TypeVar("T")

CLIENT_CLOSED = 499  # nginx's status for "client closed request"; never seen by the client


async def cancel_on_disconnect(request: Request, work: Coroutine[Any, Any, T]) -> T:
    task = asyncio.ensure_future(work)

    async def wait_for_disconnect() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    watcher = asyncio.ensure_future(wait_for_disconnect())
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            return task.result()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        logger.info("client disconnected; request cancelled")
        raise APIError(CLIENT_CLOSED, "client closed the request", code="client_closed")
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()
