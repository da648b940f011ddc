"""Graceful shutdown: on SIGTERM, refuse new requests (503), let those in flight finish, then exit.

uvicorn's own graceful shutdown closes the listening socket at once, so a client that
connects during it gets a refused connection rather than an answer, and requests past its
timeout are cut off without one. Here SIGTERM first *drains*: the socket stays open, new
requests get a 503 in the error envelope (with ``Connection: close``), ``/health`` says
``stopping``, and requests in flight run on. When they are done, or when the drain
timeout passes and the ones left are answered with a 503 of their own, uvicorn's shutdown
runs and the process exits 0.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
from collections.abc import AsyncIterator
from types import FrameType

import uvicorn
from sse_starlette import ServerSentEvent
from starlette.types import ASGIApp, Receive, Scope, Send

from diptych.server.errors import APIError, error_body
from diptych.server.sse import error_event

logger = logging.getLogger(__name__)

# Always answered, also while draining: they report on the server and start no work.
_EXEMPT_PATHS = frozenset({"/health", "/metrics"})
# After the drain timeout, the grace the requests still in flight get to send their 503.
_EXPIRY_GRACE_S = 5.0


class Drain:
    """Counts requests in flight; once draining, new ones are refused."""

    def __init__(self) -> None:
        self.draining = False
        self.in_flight = 0
        self._changed = asyncio.Event()
        # Set when the drain timeout has passed: whatever is still running answers 503.
        self.expired = asyncio.Event()

    def begin(self) -> None:
        self.draining = True

    def expire(self) -> None:
        self.expired.set()

    def enter(self) -> None:
        self.in_flight += 1

    def leave(self) -> None:
        self.in_flight -= 1
        self._changed.set()

    async def wait_idle(self, timeout_s: float) -> bool:
        """True once nothing is in flight; False if ``timeout_s`` passes first."""
        try:
            async with asyncio.timeout(timeout_s):
                while self.in_flight > 0:
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            return False
        return True

    def shutdown_error(self) -> APIError:
        return APIError(503, "the server shut down before the request finished; retry it", code="shutting_down",
                        headers={"Retry-After": "5"})

    async def guard_stream(self, chunks: AsyncIterator[ServerSentEvent]) -> AsyncIterator[ServerSentEvent]:
        """Relay a streamed body; past the drain timeout, close it (aborting its work) and end with an error event."""
        expired = asyncio.ensure_future(self.expired.wait())
        step: asyncio.Future | None = None
        try:
            while True:
                step = asyncio.ensure_future(anext(chunks))
                await asyncio.wait({step, expired}, return_when=asyncio.FIRST_COMPLETED)
                if not step.done():
                    step.cancel()
                    await asyncio.gather(step, return_exceptions=True)
                    yield error_event(self.shutdown_error())
                    return
                try:
                    chunk = step.result()
                except StopAsyncIteration:
                    return
                yield chunk
        finally:
            expired.cancel()
            if step is not None and not step.done():
                # The body is mid-step (drain expiry, or the client left): stop it before closing it.
                step.cancel()
                await asyncio.gather(step, return_exceptions=True)
            await chunks.aclose()  # type: ignore[attr-defined]


class DrainMiddleware:
    """Counts the requests in flight and, while draining, answers new ones 503."""

    def __init__(self, app: ASGIApp, drain: Drain) -> None:
        self.app = app
        self.drain = drain

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") in _EXEMPT_PATHS:
            await self.app(scope, receive, send)
            return
        if self.drain.draining:
            await _refuse(send)
            return
        self.drain.enter()
        try:
            await self.app(scope, receive, send)
        finally:
            self.drain.leave()


async def _refuse(send: Send) -> None:
    body = json.dumps(error_body(503, "the server is shutting down; retry on another instance",
                                 code="shutting_down")).encode()
    await send({
        "type": "http.response.start",
        "status": 503,
        "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"retry-after", b"5"),
            # The client should not send its next request down a connection that is going away.
            (b"connection", b"close"),
        ],
    })
    await send({"type": "http.response.body", "body": body})


class DrainingServer(uvicorn.Server):
    """uvicorn, with a drain in front of its shutdown on the first SIGTERM or SIGINT."""

    def __init__(self, config: uvicorn.Config, drain: Drain, timeout_s: float) -> None:
        super().__init__(config)
        self._drain = drain
        self._timeout_s = timeout_s
        self._loop: asyncio.AbstractEventLoop | None = None
        self._draining_task: asyncio.Future[None] | None = None

    async def serve(self, sockets: list | None = None) -> None:  # type: ignore[override]
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._loop is None or not self.started or self._drain.draining or self.should_exit:
            # Not serving yet, or a second signal: uvicorn's own handling (a second SIGINT forces).
            super().handle_exit(sig, frame)
            return
        self._drain.begin()
        # Signal handlers run between bytecodes of the loop's thread: hand over to the loop.
        self._loop.call_soon_threadsafe(self._start_drain, sig, frame)

    def _start_drain(self, sig: int, frame: FrameType | None) -> None:
        self._draining_task = asyncio.ensure_future(self._drain_then_exit(sig, frame))

    async def _drain_then_exit(self, sig: int, frame: FrameType | None) -> None:
        name = signal.Signals(sig).name
        logger.info("%s: draining %d request(s) in flight (up to %g s); new requests get 503",
                    name, self._drain.in_flight, self._timeout_s)
        if not await self._drain.wait_idle(self._timeout_s):
            logger.warning("%d request(s) still running after %g s; answering them 503",
                           self._drain.in_flight, self._timeout_s)
            self._drain.expire()
            await self._drain.wait_idle(_EXPIRY_GRACE_S)
        logger.info("drained; shutting down")
        super().handle_exit(sig, frame)
