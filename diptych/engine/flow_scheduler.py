"""The flow decoder's scheduler loop: admit, step every active job, retire finished jobs.

It owns all request state; the family's :class:`FlowRunner` owns only weights. Jobs
are stepped at step granularity so that a request can join or leave between steps
(cancellation takes effect at the next step boundary); running several jobs' steps in
one forward is the runner's business (``step`` takes a list of states).
"""

from __future__ import annotations

import logging
import math
import queue
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from diptych.engine.flow_messages import (
    Abort,
    Inbound,
    JobEvent,
    JobFailed,
    Outbound,
    Shutdown,
    Submit,
    WorkerStats,
)
from diptych.engine.types import ImageProgress, ImageRequest, ImagesFinished, PartialImage
from diptych.models.base import FlowRunner

logger = logging.getLogger(__name__)


def partial_steps(total: int, partials: int) -> frozenset[int]:
    """Steps (1-based, after which a preview is sent) evenly spaced before the last step."""
    if partials <= 0 or total <= 1:
        return frozenset()
    steps = {math.ceil(total * k / (partials + 1)) for k in range(1, partials + 1)}
    return frozenset(s for s in steps if 1 <= s < total)


@dataclass
class Job:
    request: ImageRequest
    states: list[Any]
    total_steps: int
    preview_at: frozenset[int]
    steps_done: int = 0
    partials_sent: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


class FlowScheduler:
    def __init__(self, runner: FlowRunner[Any], emit: Callable[[Outbound], None]) -> None:
        self._runner = runner
        self._emit = emit
        self._waiting: dict[str, ImageRequest] = {}
        self._jobs: dict[str, Job] = {}
        self._stopping = False
        self._steps_total = 0
        self._last_stats: WorkerStats | None = None

    # -- the loop -------------------------------------------------------------------
    def run(self, inbox: "queue.Queue[Inbound] | Any") -> None:
        while not (self._stopping and not self._jobs and not self._waiting):
            self._drain(inbox, block=not (self._jobs or self._waiting))
            self.step()

    def step(self) -> None:
        """One scheduler iteration: admit → one denoising step per job → retire."""
        self._admit()
        for request_id in list(self._jobs):
            self._advance(request_id)
        stats = WorkerStats(len(self._jobs), sum(len(j.states) for j in self._jobs.values()), self._steps_total)
        if stats != self._last_stats:
            self._emit(stats)
            self._last_stats = stats

    # -- messages -------------------------------------------------------------------
    def _drain(self, inbox: Any, *, block: bool) -> None:
        try:
            message = inbox.get(timeout=0.5) if block else inbox.get_nowait()
        except queue.Empty:
            return
        while True:
            self._handle(message)
            try:
                message = inbox.get_nowait()
            except queue.Empty:
                return

    def _handle(self, message: Inbound) -> None:
        if isinstance(message, Submit):
            self._waiting[message.request.request_id] = message.request
        elif isinstance(message, Abort):
            dropped = self._waiting.pop(message.request_id, None) or self._jobs.pop(message.request_id, None)
            if dropped is not None:
                logger.info("aborted %s", message.request_id)
        elif isinstance(message, Shutdown):
            self._stopping = True

    # -- stages -----------------------------------------------------------------------
    def _admit(self) -> None:
        while self._waiting:
            request_id, request = next(iter(self._waiting.items()))
            del self._waiting[request_id]
            try:
                states = self._runner.prepare(request)
            except ValueError as exc:
                self._emit(JobFailed(request_id, str(exc), invalid_request=True))
                continue
            except Exception as exc:  # a failing request must not take the worker down
                logger.exception("prepare failed for %s", request_id)
                self._emit(JobFailed(request_id, f"{type(exc).__name__}: {exc}"))
                continue
            total = request.num_inference_steps
            self._jobs[request_id] = Job(request, states, total, partial_steps(total, request.partial_images))

    def _advance(self, request_id: str) -> None:
        job = self._jobs[request_id]
        try:
            self._runner.step(job.states)
            job.steps_done += 1
            self._steps_total += 1
            self._emit(JobEvent(request_id, ImageProgress(job.steps_done, job.total_steps)))
            if job.steps_done in job.preview_at:
                for index, state in enumerate(job.states):
                    preview = self._runner.preview(state)
                    self._emit(
                        JobEvent(
                            request_id,
                            PartialImage(index, job.partials_sent, preview, job.steps_done, job.total_steps),
                        )
                    )
                job.partials_sent += 1
            if job.steps_done >= job.total_steps:
                images = self._runner.decode(job.states)
                del self._jobs[request_id]
                prompt_tokens = job.states[0].prompt_tokens if job.states else 0
                self._emit(JobEvent(request_id, ImagesFinished(tuple(images), prompt_tokens=prompt_tokens)))
        except Exception as exc:
            logger.exception("step failed for %s", request_id)
            self._jobs.pop(request_id, None)
            self._emit(JobFailed(request_id, f"{type(exc).__name__}: {exc}"))
