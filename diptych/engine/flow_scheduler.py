"""The flow decoder's scheduler loop: step-level continuous batching.

It owns all request state; the family's :class:`FlowRunner` owns only weights. At every
step boundary the scheduler reads its inbox (new requests, aborts), admits waiting
requests into the running batch within a token and memory budget (``flow_budget``),
prepares them together (one prompt-encoder pass), runs one denoising step for every
active request in one ``runner.step`` call, sends progress and previews, and retires the
requests that finished into one batched decode. Aborts (client gone, deadline passed)
take effect at the next boundary.

A failing request fails alone: when a batched call raises, the scheduler retries it
request by request (runners are all-or-nothing per call) and fails only the ones that
still raise.
"""

from __future__ import annotations

import logging
import math
import queue
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from diptych.engine.flow_budget import BatchBudget, select
from diptych.engine.flow_messages import Abort, Inbound, JobEvent, JobFailed, Outbound, Shutdown, Submit, WorkerStats
from diptych.models.base import FlowCost, FlowRunner, cache_stats_of
from diptych.types import ImageProgress, ImageRequest, ImagesFinished, PartialImage

logger = logging.getLogger(__name__)

T = TypeVar("T")


def partial_steps(total: int, partials: int) -> frozenset[int]:
    """Steps (1-based, after which a preview is sent) evenly spaced before the last step."""
    if partials <= 0 or total <= 1:
        return frozenset()
    steps = {math.ceil(total * k / (partials + 1)) for k in range(1, partials + 1)}
    return frozenset(s for s in steps if 1 <= s < total)


@dataclass
class Waiting:
    request: ImageRequest
    cost: FlowCost
    overtaken: int = 0


@dataclass
class Job:
    request: ImageRequest
    cost: FlowCost
    states: list[Any]
    preview_at: frozenset[int]
    steps_done: int = 0
    partials_sent: int = 0

    @property
    def request_id(self) -> str:
        return self.request.request_id

    @property
    def total_steps(self) -> int:
        return self.request.num_inference_steps


class FlowScheduler:
    def __init__(
        self, runner: FlowRunner[Any], emit: Callable[[Outbound], None], budget: BatchBudget | None = None
    ) -> None:
        self._runner = runner
        self._emit = emit
        self._budget = budget or BatchBudget()
        self._waiting: dict[str, Waiting] = {}  # insertion order is arrival order
        self._jobs: dict[str, Job] = {}
        self._stopping = False
        self._steps_total = 0
        self._last_stats: WorkerStats | None = None

    # -- the loop -------------------------------------------------------------------
    def run(self, inbox: queue.Queue[Inbound] | Any) -> None:
        while not (self._stopping and not self._jobs and not self._waiting):
            self._drain(inbox, block=not (self._jobs or self._waiting))
            self.step()

    def step(self) -> None:
        """One step boundary: admit → one denoising step for every active job → previews → retire."""
        self._admit()
        if self._jobs:
            advanced = self._denoise(list(self._jobs.values()))
            self._report(advanced)
            self._retire([job for job in advanced if job.steps_done >= job.total_steps])
        self._send_stats()

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
            self._submit(message.request)
        elif isinstance(message, Abort):
            dropped = self._waiting.pop(message.request_id, None) or self._jobs.pop(message.request_id, None)
            if dropped is not None:
                logger.info("aborted %s", message.request_id)
        elif isinstance(message, Shutdown):
            self._stopping = True

    def _submit(self, request: ImageRequest) -> None:
        try:
            cost = self._runner.check(request)
        except ValueError as exc:
            self._emit(JobFailed(request.request_id, str(exc), invalid_request=True))
            return
        except Exception as exc:  # a failing request must not take the worker down
            logger.exception("check failed for %s", request.request_id)
            self._emit(JobFailed(request.request_id, f"{type(exc).__name__}: {exc}"))
            return
        self._waiting[request.request_id] = Waiting(request, cost)

    # -- stages -----------------------------------------------------------------------
    def _admit(self) -> None:
        waiting = list(self._waiting.values())
        chosen = [waiting[i] for i in select(waiting, [job.cost for job in self._jobs.values()], self._budget)]
        if not chosen:
            return
        for entry in chosen:
            del self._waiting[entry.request.request_id]

        def prepare(batch: list[Waiting]) -> list[list[Any]]:
            return self._runner.prepare([entry.request for entry in batch])

        prepared = self._batched(chosen, prepare, preparing=True)
        for entry, states in prepared:
            request = entry.request
            self._jobs[request.request_id] = Job(
                request, entry.cost, states, partial_steps(request.num_inference_steps, request.partial_images)
            )
        logger.debug("admitted %d request(s); %d active", len(prepared), len(self._jobs))

    def _denoise(self, jobs: list[Job]) -> list[Job]:
        def step(batch: list[Job]) -> list[None]:
            self._runner.step(_states(batch))
            return [None] * len(batch)

        advanced = [job for job, _ in self._batched(jobs, step)]
        for job in advanced:
            job.steps_done += 1
        self._steps_total += len(advanced)
        return advanced

    def _report(self, jobs: list[Job]) -> None:
        for job in jobs:
            self._emit(JobEvent(job.request_id, ImageProgress(job.steps_done, job.total_steps)))
        due = [job for job in jobs if job.steps_done in job.preview_at]
        if not due:
            return
        previews = self._batched(due, lambda batch: _split(self._runner.preview(_states(batch)), batch))
        for job, images in previews:
            for index, image in enumerate(images):
                partial = PartialImage(index, job.partials_sent, image, job.steps_done, job.total_steps)
                self._emit(JobEvent(job.request_id, partial))
            job.partials_sent += 1

    def _retire(self, finished: list[Job]) -> None:
        if not finished:
            return
        for job in finished:
            del self._jobs[job.request_id]
        decoded = self._batched(finished, lambda batch: _split(self._runner.decode(_states(batch)), batch))
        for job, images in decoded:
            prompt_tokens = job.states[0].prompt_tokens if job.states else 0
            self._emit(JobEvent(job.request_id, ImagesFinished(tuple(images), prompt_tokens=prompt_tokens)))

    def _batched(
        self, items: Sequence[Any], call: Callable[[list[Any]], Sequence[T]], *, preparing: bool = False
    ) -> list[tuple[Any, T]]:
        """``call`` on all ``items`` at once; if that raises, on each alone, failing only those that still raise.

        Items are jobs or waiting entries (both carry ``request``); a failed one leaves the
        running batch and its client gets :class:`JobFailed` (a 400 when ``preparing``
        raised ``ValueError``: the request itself is at fault).
        """
        try:
            return list(zip(items, call(list(items)), strict=True))
        except Exception as exc:
            if len(items) == 1:
                self._fail(items[0], exc, preparing)
                return []
            logger.warning("a batched call over %d requests failed; retrying one by one: %s", len(items), exc)
        results = []
        for item in items:
            try:
                results.append((item, call([item])[0]))
            except Exception as exc:
                self._fail(item, exc, preparing)
        return results

    def _fail(self, item: Any, error: Exception, preparing: bool) -> None:
        request_id = item.request.request_id
        self._jobs.pop(request_id, None)
        invalid = preparing and isinstance(error, ValueError)
        if invalid:
            logger.info("request %s refused: %s", request_id, error)
        else:
            logger.error("request %s failed", request_id, exc_info=error)
        self._emit(JobFailed(request_id, str(error) if invalid else f"{type(error).__name__}: {error}", invalid))

    def _send_stats(self) -> None:
        stats = WorkerStats(len(self._jobs), sum(len(j.states) for j in self._jobs.values()), self._steps_total,
                            tuple(sorted(cache_stats_of(self._runner).items())))
        if stats != self._last_stats:
            self._emit(stats)
            self._last_stats = stats


def _states(jobs: list[Job]) -> list[Any]:
    return [state for job in jobs for state in job.states]


def _split(flat: Sequence[T], jobs: list[Job]) -> list[list[T]]:
    """A flat per-state result back into one list per job."""
    out, start = [], 0
    for job in jobs:
        out.append(list(flat[start : start + len(job.states)]))
        start += len(job.states)
    if start != len(flat):
        raise ValueError(f"runner returned {len(flat)} results for {start} states")
    return out

