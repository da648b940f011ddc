"""The gateway side of the flow decoder: starts the worker process and streams its events.

A reader thread moves worker messages onto per-request asyncio queues; nothing here
blocks the event loop. When the worker dies, every request in flight fails with
:class:`EngineUnavailableError` and the worker is restarted.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing as mp
import queue
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

from diptych.engine.config import EngineConfig
from diptych.engine.errors import EngineError, EngineUnavailableError, InvalidRequestError
from diptych.engine.flow_messages import (
    Abort,
    Fatal,
    JobEvent,
    JobFailed,
    Ready,
    Shutdown,
    Submit,
    WorkerStats,
)
from diptych.engine.flow_worker import worker_main
from diptych.engine.protocol import HealthState
from diptych.engine.types import ImageEvent, ImageRequest, ImagesFinished

logger = logging.getLogger(__name__)

_Item = ImageEvent | EngineError


class FlowClient:
    def __init__(self, config: EngineConfig, *, log_level: str = "INFO") -> None:
        self._config = config
        self._log_level = log_level
        self._ctx = mp.get_context("spawn")
        self._process: Any = None
        self._inbox: Any = None
        self._outbox: Any = None
        self._reader: threading.Thread | None = None
        self._streams: dict[str, asyncio.Queue[_Item]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._state: HealthState = "starting"
        self._stopping = False
        self.active_requests = 0
        self.active_images = 0
        self.steps_total = 0
        self.restarts = 0

    @property
    def health_state(self) -> HealthState:
        return self._state

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        await asyncio.to_thread(self._spawn_and_wait)

    def _spawn_and_wait(self) -> None:
        self._state = "starting"
        self._inbox = self._ctx.Queue()
        self._outbox = self._ctx.Queue()
        self._process = self._ctx.Process(
            target=worker_main,
            args=(str(self._config.model_dir), self._config.device, self._inbox, self._outbox, self._log_level),
            name="diptych-flow-worker",
            daemon=True,
        )
        self._process.start()
        deadline = time.monotonic() + self._config.ar_startup_timeout_s
        while True:
            try:
                message = self._outbox.get(timeout=0.5)
            except queue.Empty:
                if not self._process.is_alive():
                    self._state = "down"
                    raise EngineUnavailableError(f"flow worker exited with code {self._process.exitcode} at start-up")
                if time.monotonic() > deadline:
                    self._state = "down"
                    raise EngineUnavailableError("flow worker did not become ready in time")
                continue
            if isinstance(message, Ready):
                break
            if isinstance(message, Fatal):
                self._state = "down"
                raise EngineUnavailableError(f"flow worker failed to start: {message.message}")
        self._state = "ok"
        self._reader = threading.Thread(target=self._read, name="diptych-flow-reader", daemon=True)
        self._reader.start()
        logger.info("flow worker ready (pid %s)", self._process.pid)

    # -- the reader thread --------------------------------------------------------------
    def _read(self) -> None:
        outbox, process = self._outbox, self._process
        while True:
            try:
                message = outbox.get(timeout=0.5)
            except queue.Empty:
                if process.is_alive():
                    continue
                break
            except (EOFError, OSError):
                break
            self._dispatch(message)
        if not self._stopping:
            logger.error("flow worker died (exit code %s); restarting", process.exitcode)
            self._state = "down"
            self._fail_all(EngineUnavailableError("the flow decoder worker died; the request was not completed"))
            self._restart()

    def _restart(self) -> None:
        self.restarts += 1
        self.active_requests = self.active_images = 0
        try:
            self._spawn_and_wait()
        except EngineError:
            logger.exception("flow worker restart failed")

    def _dispatch(self, message: Any) -> None:
        if isinstance(message, WorkerStats):
            self.active_requests = message.active_requests
            self.active_images = message.active_images
            self.steps_total = message.steps_total
        elif isinstance(message, JobEvent):
            self._deliver(message.request_id, message.event)
        elif isinstance(message, JobFailed):
            error: EngineError = (
                InvalidRequestError(message.message) if message.invalid_request else EngineError(message.message)
            )
            self._deliver(message.request_id, error)

    def _deliver(self, request_id: str, item: _Item) -> None:
        stream = self._streams.get(request_id)
        if stream is not None and self._loop is not None:
            self._loop.call_soon_threadsafe(stream.put_nowait, item)

    def _fail_all(self, error: EngineError) -> None:
        for request_id in list(self._streams):
            self._deliver(request_id, error)

    # -- requests -------------------------------------------------------------------------
    async def run(self, request: ImageRequest) -> AsyncIterator[ImageEvent]:
        if self._state != "ok":
            raise EngineUnavailableError(f"the flow decoder is {self._state}")
        stream: asyncio.Queue[_Item] = asyncio.Queue()
        self._streams[request.request_id] = stream
        finished = False
        try:
            self._inbox.put(Submit(request))
            while True:
                item = await stream.get()
                if isinstance(item, EngineError):
                    finished = True
                    raise item
                yield item
                if isinstance(item, ImagesFinished):
                    finished = True
                    return
        finally:
            del self._streams[request.request_id]
            if not finished and self._state == "ok":
                # The client went away or the deadline passed: drop the job before its next step.
                self._inbox.put(Abort(request.request_id))

    async def shutdown(self, timeout_s: float = 10.0) -> None:
        self._stopping = True
        self._state = "stopping"
        if self._process is None:
            return
        if self._process.is_alive():
            self._inbox.put(Shutdown())
            await asyncio.to_thread(self._process.join, timeout_s)
        if self._process.is_alive():
            self._process.terminate()
            await asyncio.to_thread(self._process.join, 5)
        self._state = "down"
