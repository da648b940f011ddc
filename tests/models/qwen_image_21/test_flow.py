"""The Qwen-Image 2.1 flow runner against diffusers' ``QwenImage21Pipeline`` on the tiny checkpoint.

Every image is compared with the pipeline's own call for the same request (same seed,
``use_kv_cache=True``, its default), run alone: pixels within 1/255.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils._python_dispatch import TorchDispatchMode

from diptych import compat
from diptych.models.qwen_image_21 import packed
from diptych.models.qwen_image_21.flow import QwenImage21FlowRunner, QwenImage21FlowState
from diptych.models.qwen_image_21.tiny import OUTPUT_RESOLUTION
from diptych.types import ImageRequest
from tests.conftest import TinyCheckpoint

compat.install()

from diffusers import QwenImage21Pipeline  # noqa: E402  (after compat.install)

GREEN_WIDE = Image.new("RGB", (96, 64), (20, 200, 40))
RED_SEE_THROUGH = Image.new("RGBA", (64, 64), (220, 30, 30, 128))
BLUE_TALL = Image.new("RGB", (48, 80), (30, 30, 220))


@pytest.fixture(scope="module")
def tiny_dir(tiny_checkpoint: TinyCheckpoint) -> Path:
    return tiny_checkpoint("qwen-image-2.1")


@pytest.fixture(scope="module")
def runner(tiny_dir: Path) -> QwenImage21FlowRunner:
    return QwenImage21FlowRunner(tiny_dir, output_resolution=OUTPUT_RESOLUTION)


@pytest.fixture(scope="module")
def uncached(tiny_dir: Path) -> QwenImage21FlowRunner:
    """A runner that keeps no prefix across requests: every request runs its own."""
    return QwenImage21FlowRunner(tiny_dir, output_resolution=OUTPUT_RESOLUTION, cache_bytes=0)


@pytest.fixture(scope="module")
def pipe(tiny_dir: Path) -> Any:
    return QwenImage21Pipeline.from_pretrained(tiny_dir)


def reference(pipe: Any, request: ImageRequest, resolution: int = OUTPUT_RESOLUTION) -> list[Image.Image]:
    """The pipeline's images for ``request``, under the server's guidance rule."""
    guided = request.guidance_scale > 1
    return pipe(
        request.prompt,
        image=list(request.source_images) or None,
        height=request.height,
        width=request.width,
        num_inference_steps=request.num_inference_steps,
        true_cfg_scale=request.guidance_scale,
        negative_prompt=(request.negative_prompt or " ") if guided else None,
        num_images_per_prompt=request.n,
        generator=torch.Generator().manual_seed(request.seed or 0),
        output_resolution=resolution,
        use_kv_cache=True,
    ).images


def run(runner: QwenImage21FlowRunner, requests: Sequence[ImageRequest]) -> list[list[Image.Image]]:
    """All requests prepared together, stepped together (each only while it has steps left), decoded together."""
    prepared = runner.prepare(list(requests))
    states = [s for group in prepared for s in group]
    while active := [s for s in states if not s.done]:
        runner.step(active)
    images = iter(runner.decode(states))
    return [[next(images) for _ in group] for group in prepared]


def assert_close(ours: Sequence[Image.Image], theirs: Sequence[Image.Image]) -> None:
    assert len(ours) == len(theirs)
    for mine, ref in zip(ours, theirs, strict=True):
        assert (mine.mode, mine.size) == (ref.mode, ref.size)
        difference = np.abs(np.asarray(mine, dtype=np.int16) - np.asarray(ref, dtype=np.int16))
        assert difference.max() <= 1, f"max pixel difference {difference.max()} (mean {difference.mean():.4f})"


GENERATE = ImageRequest("generate", "a red square on grey", 64, 64, seed=1, num_inference_steps=4)
EDIT_ONE = ImageRequest("edit-1", "make it blue", 96, 64, seed=2, num_inference_steps=4, source_images=(GREEN_WIDE,))
EDIT_TWO = ImageRequest("edit-2", "put the first beside the second", 64, 96, seed=3, num_inference_steps=3,
                        guidance_scale=3.0, negative_prompt="blurry", source_images=(GREEN_WIDE, RED_SEE_THROUGH))


@pytest.mark.parametrize("request_", [GENERATE, EDIT_ONE, EDIT_TWO], ids=lambda r: r.request_id)
def test_alone_equals_the_pipeline(runner: QwenImage21FlowRunner, pipe: Any, request_: ImageRequest) -> None:
    (images,) = run(runner, [request_])
    assert_close(images, reference(pipe, request_))
    assert images[0].mode == "RGBA"  # the VAE decodes four channels, as the pipeline returns them


def test_a_burst_of_mixed_requests_equals_each_alone(runner: QwenImage21FlowRunner, pipe: Any) -> None:
    burst = [
        GENERATE,
        EDIT_ONE,
        EDIT_TWO,
        ImageRequest("long", "a small yellow triangle above a large green circle, on a white ground, flat colours",
                     64, 128, seed=4, num_inference_steps=5, guidance_scale=4.5),
        ImageRequest("no-cfg", "blue", 32, 64, seed=5, num_inference_steps=2, guidance_scale=1.0),
        ImageRequest("n2", "two squares", 64, 64, n=2, seed=6, num_inference_steps=3, source_images=(BLUE_TALL,)),
        ImageRequest("three", "mix them", 64, 64, seed=7, num_inference_steps=4, guidance_scale=2.0,
                     source_images=(BLUE_TALL, GREEN_WIDE, RED_SEE_THROUGH)),
        ImageRequest("square", "a red square on grey", 128, 64, seed=8, num_inference_steps=6),
    ]
    for request, images in zip(burst, run(runner, burst), strict=True):
        assert_close(images, reference(pipe, request))


class _Rows:
    """Records the rows of every packed forward."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[list[packed.PackedRow]] = []
        original = packed.packed_forward

        def spy(transformer: Any, rows: Any, backend: str = "auto") -> Any:
            self.calls.append(list(rows))
            return original(transformer, rows, backend)

        monkeypatch.setattr("diptych.models.qwen_image_21.flow.packed_forward", spy)


def test_images_of_a_request_share_each_branchs_prefix(
    uncached: QwenImage21FlowRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    rows = _Rows(monkeypatch)
    request = ImageRequest("n3", "three of them", 64, 64, n=3, seed=9, num_inference_steps=2, source_images=(GREEN_WIDE,))
    (states,) = uncached.prepare([request])
    uncached.step(states)
    uncached.step(states)
    first, second = rows.calls
    assert len(first) == len(second) == 3 * 2  # three images, two guidance branches each
    # The references' chunk is run once (by the first row), each branch's instruction once.
    assert [len(row.filled) for row in first] == [2, 1, 0, 0, 0, 0]
    assert first[0].prefix[0] is first[1].prefix[0]
    assert not any(row.filled for row in second)
    for chunk in states[0].prefixes[0]:
        assert chunk.complete and chunk.inputs is None and len(chunk.keys) == 2
        assert chunk.keys[0] is not None and chunk.keys[0].shape[0] == chunk.length


def test_a_newcomers_prefill_joins_a_running_step(
    uncached: QwenImage21FlowRunner, pipe: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    rows = _Rows(monkeypatch)
    (early,) = uncached.prepare([EDIT_ONE])
    uncached.step(early)
    (late,) = uncached.prepare([EDIT_TWO])
    while active := [s for s in early + late if not s.done]:
        uncached.step(active)
    joined = rows.calls[1]
    assert [len(row.filled) for row in joined] == [0, 0, 2, 1]  # one forward, both kinds
    assert_close(uncached.decode(early), reference(pipe, EDIT_ONE))
    assert_close(uncached.decode(late), reference(pipe, EDIT_TWO))


def test_a_failed_step_changes_nothing(
    uncached: QwenImage21FlowRunner, pipe: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    runner = uncached
    (states,) = runner.prepare([EDIT_ONE])
    failing = {"left": 1}
    original = packed.PackContext.keys_and_values

    def fail_in_layer_one(self: packed.PackContext, layer: int, keys: Any, values: Any) -> Any:
        result = original(self, layer, keys, values)  # layer 0's prefix is stored before the failure
        if layer == 1 and failing["left"]:
            failing["left"] -= 1
            raise RuntimeError("injected")
        return result

    monkeypatch.setattr(packed.PackContext, "keys_and_values", fail_in_layer_one)
    before = states[0].latents.clone()
    with pytest.raises(RuntimeError, match="injected"):
        runner.step(states)
    assert states[0].step_index == 0 and torch.equal(states[0].latents, before)
    assert not any(chunk.complete or chunk.inputs is None for chunk in states[0].prefixes[0])
    while not states[0].done:
        runner.step(states)
    assert_close(runner.decode(states), reference(pipe, EDIT_ONE))


def test_previews_are_the_predicted_clean_image(runner: QwenImage21FlowRunner) -> None:
    (states,) = runner.prepare([EDIT_ONE])
    with pytest.raises(ValueError, match="no step yet"):
        runner.preview(states)
    runner.step(states)
    (preview,) = runner.preview(states)
    assert preview.size == (96, 64) and preview.mode == "RGBA"
    assert states[0].pred_clean is not None
    expected = runner.decode([_with_latents(states[0], states[0].pred_clean)])
    assert np.array_equal(np.asarray(preview), np.asarray(expected[0]))


def _with_latents(state: QwenImage21FlowState, latents: torch.Tensor) -> QwenImage21FlowState:
    return QwenImage21FlowState(**{**vars(state), "latents": latents})


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"width": 80}, "multiple of 32"),
        ({"n": 0}, "must be >= 1"),
        ({"source_images": (GREEN_WIDE,) * 11}, "limit of 10"),
        ({"mask": GREEN_WIDE}, "mask"),
    ],
)
def test_check_refuses_what_cannot_run(runner: QwenImage21FlowRunner, change: dict[str, Any], message: str) -> None:
    request = ImageRequest(**{**vars(GENERATE), **change})
    with pytest.raises(ValueError, match=message):
        runner.check(request)


def test_price_counts_references_guidance_and_images(runner: QwenImage21FlowRunner) -> None:
    base = runner.check(GENERATE)
    with_reference = runner.check(ImageRequest(**{**vars(GENERATE), "source_images": (GREEN_WIDE,)}))
    unguided = runner.check(ImageRequest(**{**vars(GENERATE), "guidance_scale": 1.0}))
    two = runner.check(ImageRequest(**{**vars(GENERATE), "n": 2}))
    assert with_reference.tokens > base.tokens and with_reference.memory_bytes > base.memory_bytes
    assert unguided.tokens < base.tokens and unguided.memory_bytes < base.memory_bytes
    assert base.tokens < two.tokens < 2 * base.tokens  # the prefixes are shared by the images
    # The first step runs the prompt's prefix and the target, per branch: at least that many tokens.
    (states,) = runner.prepare([GENERATE])
    assert base.tokens >= sum(layout.length for layout in states[0].layouts)
    assert base.tokens == sum(layout.length for layout in states[0].layouts) + GENERATE.n * 0


class _LargestOutput(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204 - torch protocol
        out = func(*args, **(kwargs or {}))
        for tensor in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(tensor, torch.Tensor):
                self.largest = max(self.largest, tensor.numel())
        return out


def test_no_step_builds_an_l_by_l_tensor(tiny_dir: Path) -> None:
    # At 512 px a reference and the target are 1024 tokens each: L is about 2100 per branch.
    large = QwenImage21FlowRunner(tiny_dir, output_resolution=512)
    request = ImageRequest("big", "make it blue", 512, 512, seed=1, num_inference_steps=2,
                           source_images=(GREEN_WIDE.resize((512, 512)),))
    (states,) = large.prepare([request])
    length = max(layout.length for layout in states[0].layouts)
    assert length > 2048
    for _ in range(2):  # the prefill, then a step over the stored prefix
        with _LargestOutput() as probe:
            large.step(states)
        assert probe.largest < length * length // 4


@pytest.mark.slow
def test_the_price_covers_what_a_first_step_takes(tmp_path: Path) -> None:
    # Resident memory, not a model of it: the mid checkpoint (1024 wide, as real GEMMs are), a
    # burst's first step (every prefill and target), the allocator emptied before it. Warmed
    # up first: the first forward in a process raises RSS once more (about 340 MiB here), and
    # that is the process's, not a request's.
    import ctypes
    import gc

    from diptych.models.qwen_image_21.tiny import MID_OUTPUT_RESOLUTION, write_mid_qwen_image_21

    runner = QwenImage21FlowRunner(write_mid_qwen_image_21(tmp_path / "mid"), output_resolution=MID_OUTPUT_RESOLUTION,
                                   cache_bytes=0)
    warm = runner.prepare([ImageRequest("warm", "warm up", 256, 256, seed=0, num_inference_steps=2)])[0]
    runner.step(warm)
    runner.step(warm)
    requests = [
        ImageRequest(f"r{i}", "a prompt of some words " * (1 + i % 3), 256, 192 + 64 * (i % 2), seed=i,
                     num_inference_steps=20,
                     source_images=tuple(Image.new("RGB", (256, 256), (30 * i, 50, 200 - j)) for j in range(i % 3)))
        for i in range(8)
    ]
    price = sum(runner.check(request).memory_bytes for request in requests)
    states = [s for group in runner.prepare(requests) for s in group]
    del warm
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    Path("/proc/self/clear_refs").write_text("5")  # resets the high-water mark to the current RSS
    before = _status_bytes("VmRSS")
    runner.step(states)
    assert price >= _status_bytes("VmHWM") - before


def _status_bytes(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"{field} not in /proc/self/status")
