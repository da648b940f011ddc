"""Step-level batching on the tiny checkpoints: batch invariance, CFG in one forward, grouping by layout."""

from __future__ import annotations

import queue
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from diptych.engine.flow_messages import JobEvent, JobFailed, Shutdown, Submit
from diptych.engine.flow_scheduler import FlowScheduler
from diptych.models.qwen_image.denoise import pad_prompts
from diptych.models.qwen_image.flow import QwenImageFlowRunner
from diptych.types import ImageRequest, ImagesFinished

SMALL_SOURCE_AREA = 96 * 96


@pytest.fixture(scope="module")
def runner(tiny_qwen_image_edit_dir: Path) -> QwenImageFlowRunner:
    """Generates and edits; sources brought to a small area so that edits stay cheap."""
    return QwenImageFlowRunner(tiny_qwen_image_edit_dir, "cpu", source_area=SMALL_SOURCE_AREA)


def _source(colour: tuple[int, int, int]) -> Image.Image:
    gradient = np.linspace(0, 1, 72, dtype=np.float32)[None, :, None] * np.ones((56, 1, 3), np.float32)
    return Image.fromarray((gradient * np.array(colour, np.float32)).astype(np.uint8))


def _request(rid: str, **overrides: Any) -> ImageRequest:
    values: dict[str, Any] = {"prompt": "a red circle on a white background", "width": 64, "height": 48,
                              "num_inference_steps": 4, "guidance_scale": 4.0, "negative_prompt": "blurry, dark",
                              "seed": 1234}
    return ImageRequest(request_id=rid, **{**values, **overrides})


# The request under test and seven others of other sizes, step counts, guidance scales,
# seeds, prompt lengths and tasks; "same-layout" shares its transformer forward.
TARGET = _request("target")
OTHERS = [
    _request("same-layout", prompt="a much longer prompt about a blue square next to a green triangle", seed=7,
             num_inference_steps=6, guidance_scale=2.5, negative_prompt=None),
    _request("small", width=32, height=32, num_inference_steps=3, seed=3),
    _request("tall", width=48, height=64, num_inference_steps=5, seed=4, guidance_scale=1.0),
    _request("two", width=32, height=48, n=2, num_inference_steps=2, seed=5, prompt="two yellow stars"),
    _request("edit", width=64, height=64, source_images=(_source((220, 40, 40)),), prompt="make the sky blue",
             seed=6, num_inference_steps=3),
    _request("edit-other", width=64, height=48, source_images=(_source((40, 40, 220)),), prompt="add a dog",
             seed=8, num_inference_steps=4, guidance_scale=1.0),
    _request("long", width=96, height=64, num_inference_steps=7, seed=9, negative_prompt="noise"),
]


def _serve(runner: QwenImageFlowRunner, requests: list[ImageRequest]) -> dict[str, tuple[Image.Image, ...]]:
    """Run ``requests`` through the flow scheduler, all submitted at once; images by request id."""
    inbox: queue.Queue = queue.Queue()
    for request in requests:
        inbox.put(Submit(request))
    inbox.put(Shutdown())
    out: list = []
    FlowScheduler(runner, out.append).run(inbox)
    failures = [m for m in out if isinstance(m, JobFailed)]
    assert not failures, failures
    return {m.request_id: m.event.images for m in out if isinstance(m, JobEvent) and isinstance(m.event, ImagesFinished)}


def _max_diff(a: Image.Image, b: Image.Image) -> int:
    return int(np.abs(np.asarray(a).astype(np.int16) - np.asarray(b).astype(np.int16)).max())


class ForwardSpy:
    """Counts the transformer's forwards and the rows of each."""

    def __init__(self, transformer: Any) -> None:
        self.rows: list[int] = []
        self._forward = transformer.forward

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.rows.append(int(kwargs["hidden_states"].shape[0]))
        return self._forward(*args, **kwargs)


@pytest.fixture
def forward_spy(runner: QwenImageFlowRunner, monkeypatch: pytest.MonkeyPatch) -> ForwardSpy:
    transformer = runner._parts.transformer
    spy = ForwardSpy(transformer)
    monkeypatch.setattr(transformer, "forward", spy)
    return spy


def test_an_image_is_the_same_alone_and_batched_with_seven_others(
    runner: QwenImageFlowRunner, forward_spy: ForwardSpy
) -> None:
    # An empty prompt cache before each run: every prompt is encoded in the batch it runs in.
    runner.conditioner.cache.clear()
    together = _serve(runner, [TARGET, *OTHERS])
    batched_forwards = len(forward_spy.rows)
    alone = {}
    for request in [TARGET, *OTHERS]:
        runner.conditioner.cache.clear()
        alone[request.request_id] = _serve(runner, [request])[request.request_id]
    # They really shared forwards: fewer of them, and target's with same-layout's (2 + 2 rows).
    assert batched_forwards < len(forward_spy.rows) - batched_forwards
    assert max(forward_spy.rows[:batched_forwards]) >= 4
    for request_id, images in alone.items():
        assert len(together[request_id]) == len(images)
        for solo, batched in zip(images, together[request_id], strict=True):
            assert batched.size == solo.size
            assert _max_diff(solo, batched) <= 1, request_id
    # The requests are not interchangeable: batching could not have hidden a mix-up.
    assert _max_diff(alone["target"][0], alone["same-layout"][0]) > 10


def test_both_guidance_branches_run_in_one_forward_per_image_layout(
    runner: QwenImageFlowRunner, forward_spy: ForwardSpy
) -> None:
    requests = [_request("a"), _request("b", seed=2, guidance_scale=1.0), _request("c", width=32, height=32)]
    states = [s for group in runner.prepare(requests) for s in group]
    runner.step(states)
    # 64x48: a's two branches and b's one in one forward; 32x32: c's two branches in another.
    assert forward_spy.rows == [3, 2]
    assert [s.step_index for s in states] == [1, 1, 1]


def test_a_failing_step_leaves_every_state_unchanged(runner: QwenImageFlowRunner, monkeypatch: pytest.MonkeyPatch) -> None:
    states = [s for group in runner.prepare([_request("a"), _request("b", width=32, height=32)]) for s in group]
    before = [s.latents.clone() for s in states]
    calls = {"n": 0}
    forward = runner._parts.transformer.forward

    def fail_second(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("out of memory")
        return forward(*args, **kwargs)

    monkeypatch.setattr(runner._parts.transformer, "forward", fail_second)
    with pytest.raises(RuntimeError):
        runner.step(states)
    assert all(s.step_index == 0 and torch.equal(s.latents, b) for s, b in zip(states, before, strict=True))


def test_prompts_are_right_padded_and_masked_only_when_lengths_differ() -> None:
    a, b = torch.ones(1, 3, 4), torch.full((1, 5, 4), 2.0)
    padded, mask = pad_prompts([a, b])
    assert padded.shape == (2, 5, 4) and mask is not None
    assert mask.tolist() == [[True] * 3 + [False] * 2, [True] * 5]
    assert torch.equal(padded[0, :3], a[0]) and torch.equal(padded[0, 3:], torch.zeros(2, 4))
    same, no_mask = pad_prompts([a, a])
    assert no_mask is None and same.shape == (2, 3, 4)
