"""The flow scheduler loop, driven with a counting runner: admission, stepping, previews, abort, failures."""

from __future__ import annotations

import queue
from dataclasses import dataclass

from PIL import Image

from diptych.engine.flow_messages import Abort, JobEvent, JobFailed, Shutdown, Submit, WorkerStats
from diptych.engine.flow_scheduler import FlowScheduler, partial_steps
from diptych.engine.types import ImageProgress, ImageRequest, ImagesFinished, PartialImage


@dataclass
class CountingState:
    step_index: int
    num_steps: int
    seed: int
    prompt_tokens: int = 4


class CountingRunner:
    """Each state counts its steps; prompt 'boom' fails to prepare, 'crash' fails mid-denoise."""

    def __init__(self) -> None:
        self.step_batches: list[int] = []

    def prepare(self, request: ImageRequest) -> list[CountingState]:
        if request.prompt == "boom":
            raise ValueError("prompt refused")
        return [CountingState(0, request.num_inference_steps, i) for i in range(request.n)]

    def step(self, states: list[CountingState]) -> None:
        self.step_batches.append(len(states))
        for state in states:
            if state.step_index == 1 and state.num_steps == 99:
                raise RuntimeError("crash")
            state.step_index += 1

    def preview(self, state: CountingState) -> Image.Image:
        return Image.new("L", (4, 4), state.step_index)

    def decode(self, states: list[CountingState]) -> list[Image.Image]:
        return [Image.new("L", (4, 4), s.step_index) for s in states]


def request(rid: str, steps: int = 3, n: int = 1, partials: int = 0, prompt: str = "p") -> ImageRequest:
    return ImageRequest(request_id=rid, prompt=prompt, width=16, height=16, n=n, num_inference_steps=steps,
                        partial_images=partials)


def run(messages: list) -> tuple[list, CountingRunner]:
    inbox: queue.Queue = queue.Queue()
    for m in [*messages, Shutdown()]:
        inbox.put(m)
    out: list = []
    runner = CountingRunner()
    FlowScheduler(runner, out.append).run(inbox)
    return out, runner


def events_of(out: list, rid: str) -> list:
    return [m.event for m in out if isinstance(m, JobEvent) and m.request_id == rid]


def test_partial_steps_are_evenly_spaced_before_the_end() -> None:
    assert partial_steps(8, 0) == frozenset()
    assert partial_steps(8, 1) == {4}
    assert partial_steps(9, 2) == {3, 6}
    assert partial_steps(2, 3) == {1}
    assert all(s < 20 for s in partial_steps(20, 3))


def test_jobs_interleave_step_by_step_and_finish_with_their_own_images() -> None:
    out, runner = run([Submit(request("a", steps=3, n=2)), Submit(request("b", steps=1))])
    a = events_of(out, "a")
    assert [e.step for e in a if isinstance(e, ImageProgress)] == [1, 2, 3]
    (done,) = [e for e in a if isinstance(e, ImagesFinished)]
    assert [img.getpixel((0, 0)) for img in done.images] == [3, 3]
    assert done.prompt_tokens == 4
    assert isinstance(events_of(out, "b")[-1], ImagesFinished)
    # a's two images step together; b joined the first iteration beside a.
    assert runner.step_batches[:2] == [2, 1]
    stats = [m for m in out if isinstance(m, WorkerStats)]
    assert stats[-1].steps_total == 4 and stats[-1].active_requests == 0


def test_partial_images_carry_progress() -> None:
    out, _ = run([Submit(request("a", steps=4, partials=1))])
    (partial,) = [e for e in events_of(out, "a") if isinstance(e, PartialImage)]
    assert (partial.step, partial.total, partial.partial_index) == (2, 4, 0)
    assert partial.image.getpixel((0, 0)) == 2


def test_abort_drops_a_job_before_its_next_step() -> None:
    out, runner = run([Submit(request("a", steps=50)), Abort("a"), Submit(request("b", steps=2))])
    assert events_of(out, "a") == []  # aborted while waiting: never prepared nor stepped
    assert isinstance(events_of(out, "b")[-1], ImagesFinished)
    assert sum(runner.step_batches) == 2


def test_a_failing_request_does_not_take_others_down() -> None:
    out, _ = run([Submit(request("bad", prompt="boom")), Submit(request("crash", steps=99)),
                  Submit(request("good", steps=2))])
    failures = {m.request_id: m for m in out if isinstance(m, JobFailed)}
    assert failures["bad"].invalid_request and "refused" in failures["bad"].message
    assert not failures["crash"].invalid_request and "crash" in failures["crash"].message
    assert isinstance(events_of(out, "good")[-1], ImagesFinished)
