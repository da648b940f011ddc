"""The gateway side of one flow-decoder worker: starts its process and streams its events.

Requests go to the worker over a ``multiprocessing`` queue; its messages come back over a
one-way pipe of which the worker holds the only write end, so the reader thread sees
end-of-file the moment the worker dies (even half-way through a message). Nothing here
blocks the event loop: the reader hands every message to the loop, in order.

**Crash recovery.** When the worker dies, every request in flight fails at once with
:class:`EngineUnavailableError` (503), health says ``restarting``, and a new worker is
spawned (with backoff if that fails too); health is ``ok`` again once it is ready.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import multiprocessing as mp
import os
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from diptych.engine.children import sigint_blocked
from diptych.engine.errors import (
    EngineError,
    EngineUnavailableError,
    InvalidRequestError,
)
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
from diptych.types import CacheStats, EngineConfig, ImageEvent, ImageRequest, ImagesFinished

logger = logging.getLogger(__name__)

_Item = ImageEvent | EngineError
_RESTART_BACKOFF_S = (1.0, 2.0, 5.0, 10.0, 30.0)  # between failed restarts; the last repeats


@dataclass(frozen=True)
class _Worker:
    process: Any  # multiprocessing's SpawnProcess
    inbox: Any  # multiprocessing Queue: gateway → worker
    outbox: Any  # read end of a one-way Pipe: worker → gateway


class FlowWorkerClient:
    """One worker process on one device (``cpus``: the CPUs it may use; None: all); see flow_client.py's pool."""

    def __init__(self, config: EngineConfig, *, device: str | None = None, cpus: tuple[int, ...] | None = None,
                 index: int = 0, log_level: str = "INFO") -> None:
        self._config = config
        self.device = device or config.device
        self.cpus = cpus
        self.index = index
        self._log_level = log_level
        self._ctx = mp.get_context("spawn")
        self._worker: _Worker | None = None
        self._streams: dict[str, asyncio.Queue[_Item]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._state: HealthState = "starting"
        self._stopping = False
        self._restarting: asyncio.Task[None] | None = None
        self.active_requests = 0
        self.active_images = 0
        self.steps_total = 0
        self.caches: dict[str, CacheStats] = {}  # the runner's caches across requests, as last reported
        self.restarts = 0
        self.budget_bytes = 0  # the worker's activation budget, as it reported when ready
        self.images_in_flight = 0  # images of the requests sent to it and not ended (the pool's load measure)
        # The server's GPU numbering, which ``device`` is in (vLLM's placement may narrow the gateway's later).
        self._visible_devices = os.environ.get("CUDA_VISIBLE_DEVICES")

    @property
    def health_state(self) -> HealthState:
        return self._state

    @property
    def worker_pid(self) -> int | None:
        return self._worker.process.pid if self._worker is not None else None

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        await self._launch()

    async def _launch(self) -> None:
        try:
            worker = await asyncio.to_thread(self._spawn_and_wait)
        except EngineUnavailableError:
            self._state = "stopping" if self._stopping else "down"
            raise
        if self._stopping:  # shutdown began while the worker was loading
            await asyncio.to_thread(_stop_process, worker, 0)
            raise EngineUnavailableError("the flow decoder is stopping")
        self._worker = worker
        self._state = "ok"
        threading.Thread(target=self._read, args=(worker,), name=f"diptych-flow-reader-{self.index}",
                         daemon=True).start()
        logger.info("flow worker %d ready on %s (pid %s)", self.index, self.device, worker.process.pid)

    def _spawn_and_wait(self) -> _Worker:
        inbox = self._ctx.Queue()
        outbox, worker_end = self._ctx.Pipe(duplex=False)
        process = self._ctx.Process(
            target=worker_main,
            args=(str(self._config.model_dir), self.device, self._config.dtype, inbox, worker_end,
                  self._log_level, self._config.flow_memory_gib, self._config.flow_cache_gib, self.cpus,
                  self._visible_devices),
            name=f"diptych-flow-worker-{self.index}",
            daemon=True,
        )
        with sigint_blocked():  # Ctrl+C is the gateway's to handle (children.py)
            process.start()
        worker_end.close()  # the worker now holds the only write end: its death is our EOF
        worker = _Worker(process, inbox, outbox)
        deadline = time.monotonic() + self._config.ar_startup_timeout_s
        try:
            while True:
                if self._stopping:
                    raise EngineUnavailableError("the flow decoder is stopping")
                if time.monotonic() > deadline:
                    raise EngineUnavailableError("flow worker did not become ready in time")
                if not outbox.poll(0.5):
                    continue
                try:
                    message = outbox.recv()
                except (EOFError, OSError):
                    process.join(5)
                    raise EngineUnavailableError(
                        f"flow worker exited with code {process.exitcode} at start-up"
                    ) from None
                if isinstance(message, Ready):
                    self.budget_bytes = message.budget_bytes
                    return worker
                if isinstance(message, Fatal):
                    raise EngineUnavailableError(f"flow worker failed to start: {message.message}")
        except BaseException:
            _stop_process(worker, timeout_s=5)
            raise

    # -- the reader thread --------------------------------------------------------------
    def _read(self, worker: _Worker) -> None:
        loop = self._loop
        assert loop is not None
        while True:
            try:
                message = worker.outbox.recv()
            except (EOFError, OSError):
                break  # the worker exited: every write end is closed
            except Exception:
                logger.exception("unreadable message from the flow worker; restarting it")
                worker.process.kill()
                break
            loop.call_soon_threadsafe(self._dispatch, message)
        worker.process.join(5)
        loop.call_soon_threadsafe(self._worker_exited, worker)

    # -- on the event loop ----------------------------------------------------------------
    def _dispatch(self, message: Any) -> None:
        if isinstance(message, WorkerStats):
            self.active_requests = message.active_requests
            self.active_images = message.active_images
            self.steps_total = message.steps_total
            self.caches = dict(message.caches)
        elif isinstance(message, JobEvent):
            self._deliver(message.request_id, message.event)
        elif isinstance(message, JobFailed):
            error: EngineError = (
                InvalidRequestError(message.message) if message.invalid_request else EngineError(message.message)
            )
            self._deliver(message.request_id, error)

    def _deliver(self, request_id: str, item: _Item) -> None:
        stream = self._streams.get(request_id)
        if stream is not None:
            stream.put_nowait(item)

    def _worker_exited(self, worker: _Worker) -> None:
        if worker is not self._worker or self._stopping:
            return  # an orderly shutdown, or a worker already replaced
        logger.error("flow worker %d (pid %s) died with exit code %s; failing %d request(s) and restarting it",
                     self.index, worker.process.pid, worker.process.exitcode, len(self._streams))
        self._worker = None
        self._state = "restarting"
        _abandon(worker)
        self.active_requests = self.active_images = 0
        # On the loop, like run(): a request either registered before this (and fails now)
        # or sees the state and is refused; none can wait on the dead worker.
        error = EngineUnavailableError("the flow decoder worker died; the request was not completed",
                                       code="engine_restarting")
        for stream in self._streams.values():
            stream.put_nowait(error)
        self._restarting = asyncio.ensure_future(self._restart())

    async def _restart(self) -> None:
        for attempt in itertools.count():
            self._state = "restarting"
            self.restarts += 1
            try:
                await self._launch()
                logger.info("flow worker %d restarted", self.index)
                return
            except EngineUnavailableError:
                if self._stopping:
                    return
                logger.exception("flow worker %d restart failed", self.index)
            await asyncio.sleep(_RESTART_BACKOFF_S[min(attempt, len(_RESTART_BACKOFF_S) - 1)])
            if self._stopping:
                return

    # -- requests -------------------------------------------------------------------------
    async def run(self, request: ImageRequest) -> AsyncIterator[ImageEvent]:
        worker = self._worker
        if self._state != "ok" or worker is None:
            raise EngineUnavailableError(f"the flow decoder is {self._state}",
                                         code="engine_restarting" if self._state == "restarting" else None)
        stream: asyncio.Queue[_Item] = asyncio.Queue()
        self._streams[request.request_id] = stream
        self.images_in_flight += request.n
        finished = False
        try:
            worker.inbox.put(Submit(request))
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
            self.images_in_flight -= request.n
            if not finished and worker is self._worker:
                # The client went away or the deadline passed: drop the job before its next step.
                worker.inbox.put(Abort(request.request_id))

    async def shutdown(self, timeout_s: float = 10.0) -> None:
        self._stopping = True
        self._state = "stopping"
        if self._restarting is not None and not self._restarting.done():
            # A spawn under way notices _stopping within half a second and stops its worker.
            await asyncio.gather(self._restarting, return_exceptions=True)
        worker, self._worker = self._worker, None
        if worker is not None:
            if worker.process.is_alive():
                worker.inbox.put(Shutdown())
            await asyncio.to_thread(_stop_process, worker, timeout_s)
        error = EngineUnavailableError("the flow decoder stopped before the request finished", code="shutting_down")
        for stream in self._streams.values():
            stream.put_nowait(error)
        self._state = "down"


def _stop_process(worker: _Worker, timeout_s: float) -> None:
    """Wait for the worker to exit (it was asked to), then terminate, then kill it."""
    process = worker.process
    process.join(timeout_s)
    if process.is_alive():
        process.terminate()
        process.join(5)
    if process.is_alive():
        process.kill()
        process.join(5)
    _abandon(worker)


def _abandon(worker: _Worker) -> None:
    """Release a dead worker's queue and pipe; a feeder thread stuck on it must not block exit."""
    worker.inbox.cancel_join_thread()
    worker.inbox.close()
    worker.outbox.close()
