"""The flow scheduler loop, driven with a counting runner: batched admission and steps, budget, aging, abort, failures."""

from __future__ import annotations

import queue
from collections.abc import Callable
from dataclasses import dataclass

from PIL import Image

from diptych.engine.flow_budget import BatchBudget
from diptych.engine.flow_messages import Abort, JobEvent, JobFailed, Shutdown, Submit, WorkerStats
from diptych.engine.flow_scheduler import FlowScheduler, partial_steps
from diptych.models.base import FlowCost
from diptych.types import ImageProgress, ImageRequest, ImagesFinished, PartialImage


@dataclass
class CountingState:
    step_index: int
    num_steps: int
    seed: int
    prompt_tokens: int = 4


class CountingRunner:
    """Each state counts its steps; prompt 'boom' fails to prepare, 'crash' fails mid-denoise.

    Records the size of every batched call, so tests can see what ran together.
    """

    def __init__(self, tokens_per_image: int = 10) -> None:
        self.tokens_per_image = tokens_per_image
        self.prepare_batches: list[list[str]] = []
        self.step_batches: list[int] = []
        self.preview_batches: list[int] = []
        self.decode_batches: list[int] = []
        self.on_step: Callable[[int], None] = lambda count: None

    def check(self, request: ImageRequest) -> FlowCost:
        if request.prompt == "refuse":
            raise ValueError("refused at once")
        return FlowCost(tokens=self.tokens_per_image * request.n * request.height // 16, memory_bytes=request.n)

    def prepare(self, requests: list[ImageRequest]) -> list[list[CountingState]]:
        self.prepare_batches.append([r.request_id for r in requests])
        if any(r.prompt == "boom" for r in requests):
            raise ValueError("prompt refused")
        return [[CountingState(0, r.num_inference_steps, i) for i in range(r.n)] for r in requests]

    def step(self, states: list[CountingState]) -> None:
        self.step_batches.append(len(states))
        # All or nothing, as the protocol asks: check every state before advancing any.
        if any(s.step_index == 1 and s.num_steps == 99 for s in states):
            raise RuntimeError("crash")
        for state in states:
            state.step_index += 1
        self.on_step(len(self.step_batches))

    def preview(self, states: list[CountingState]) -> list[Image.Image]:
        self.preview_batches.append(len(states))
        return [Image.new("L", (4, 4), s.step_index) for s in states]

    def decode(self, states: list[CountingState]) -> list[Image.Image]:
        self.decode_batches.append(len(states))
        return [Image.new("L", (4, 4), s.step_index) for s in states]


def request(rid: str, steps: int = 3, n: int = 1, partials: int = 0, prompt: str = "p", side: int = 16) -> ImageRequest:
    return ImageRequest(request_id=rid, prompt=prompt, width=side, height=side, n=n, num_inference_steps=steps,
                        partial_images=partials)


def run(messages: list, budget: BatchBudget | None = None) -> tuple[list, CountingRunner]:
    inbox: queue.Queue = queue.Queue()
    for m in [*messages, Shutdown()]:
        inbox.put(m)
    out: list = []
    runner = CountingRunner()
    FlowScheduler(runner, out.append, budget).run(inbox)
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
    # Both arrived together: prepared in one call, stepped in one call until b (1 step) retired.
    assert runner.prepare_batches == [["a", "b"]]
    assert runner.step_batches == [3, 2, 2]
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


def test_every_active_request_steps_in_one_call_and_finishers_decode_together() -> None:
    out, runner = run([Submit(request(f"r{i}", steps=2 + i % 2)) for i in range(8)])
    assert runner.prepare_batches == [[f"r{i}" for i in range(8)]]
    assert runner.step_batches == [8, 8, 4]  # the 2-step half retired after step 2
    assert runner.decode_batches == [4, 4]
    for i in range(8):
        (done,) = [e for e in events_of(out, f"r{i}") if isinstance(e, ImagesFinished)]
        assert done.images[0].getpixel((0, 0)) == 2 + i % 2  # each got its own states back


def test_previews_due_at_the_same_step_decode_together() -> None:
    out, runner = run([Submit(request("a", steps=4, partials=1, n=2)), Submit(request("b", steps=4, partials=3))])
    assert runner.preview_batches == [1, 3, 1]  # step 1: b; step 2: a's two images and b; step 3: b
    partials = [e for e in events_of(out, "a") if isinstance(e, PartialImage)]
    assert [(p.index, p.partial_index, p.step) for p in partials] == [(0, 0, 2), (1, 0, 2)]


def test_requests_join_at_step_boundaries_within_the_token_budget() -> None:
    # Each 16x16 image costs 10 tokens: a budget of 20 holds two requests at a time.
    out, runner = run([Submit(request(r, steps=2)) for r in "abcd"], BatchBudget(max_tokens=20))
    assert runner.prepare_batches == [["a", "b"], ["c", "d"]]
    assert runner.step_batches == [2, 2, 2, 2]
    assert all(isinstance(events_of(out, r)[-1], ImagesFinished) for r in "abcd")


def test_an_oversized_request_runs_alone_once_the_batch_is_empty() -> None:
    # "big" (64x64: 40 tokens) exceeds the whole budget; it still runs, alone.
    out, runner = run([Submit(request("small", steps=3)), Submit(request("big", steps=1, side=64))],
                      BatchBudget(max_tokens=20))
    assert runner.prepare_batches == [["small"], ["big"]]
    assert runner.step_batches == [1, 1, 1, 1]
    assert isinstance(events_of(out, "big")[-1], ImagesFinished)


def test_aging_stops_later_requests_from_overtaking_a_blocked_one() -> None:
    """A 20-token request waits behind a 10-token one in a 20-token budget; small ones backfill only twice."""
    budget = BatchBudget(max_tokens=20, max_overtakes=2)
    messages = [Submit(request("long", steps=6)), Submit(request("wide", steps=1, side=32))]
    messages += [Submit(request(f"s{i}", steps=1)) for i in range(4)]
    out, runner = run(messages, budget)
    # s0 and s1 overtake "wide" (twice), then nothing may pass it: s2, s3 wait until it ran.
    assert runner.prepare_batches == [["long", "s0"], ["s1"], ["wide"], ["s2", "s3"]]
    assert all(isinstance(events_of(out, r)[-1], ImagesFinished) for r in ["long", "wide", "s0", "s1", "s2", "s3"])


def test_invalid_requests_are_refused_on_arrival() -> None:
    out, runner = run([Submit(request("r", prompt="refuse")), Submit(request("ok", steps=1))])
    (failure,) = [m for m in out if isinstance(m, JobFailed)]
    assert failure.request_id == "r" and failure.invalid_request
    assert runner.prepare_batches == [["ok"]]


def test_abort_of_an_active_job_takes_effect_at_the_next_step_boundary() -> None:
    inbox: queue.Queue = queue.Queue()
    runner = CountingRunner()
    # The client goes away while the second step runs.
    runner.on_step = lambda count: inbox.put(Abort("a")) if count == 2 else None
    for message in (Submit(request("a", steps=10)), Submit(request("b", steps=3)), Shutdown()):
        inbox.put(message)
    out: list = []
    FlowScheduler(runner, out.append).run(inbox)
    assert runner.step_batches == [2, 2, 1]
    assert [e.step for e in events_of(out, "a")] == [1, 2]
    assert isinstance(events_of(out, "b")[-1], ImagesFinished)
