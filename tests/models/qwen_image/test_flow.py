"""QwenImageFlowRunner against diffusers' QwenImagePipeline / QwenImageEditPipeline on tiny checkpoints.

Each comparison runs the reference once with a callback that records its latents after
every step, so the runner is checked step by step as well as on the final pixels.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from diptych.models.qwen_image.flow import EMPTY_NEGATIVE_PROMPT, QwenImageFlowRunner
from diptych.types import ImageRequest

PROMPT = "a red circle on a white background"
SEED = 1234


def _request(**overrides: Any) -> ImageRequest:
    values: dict[str, Any] = {
        "request_id": "req",
        "prompt": PROMPT,
        "width": 64,
        "height": 48,
        "n": 2,
        "num_inference_steps": 3,
        "guidance_scale": 4.0,
        "negative_prompt": "blurry, dark",
        "seed": SEED,
    }
    return ImageRequest(**{**values, **overrides})


def _run(runner: QwenImageFlowRunner, request: ImageRequest) -> tuple[list[Image.Image], list[torch.Tensor]]:
    """Final images and the packed latents of all n images after each step."""
    (states,) = runner.prepare([request])
    trajectory = []
    for _ in range(request.num_inference_steps):
        runner.step(states)
        trajectory.append(torch.cat([s.latents for s in states]))
    return runner.decode(states), trajectory


def _reference(pipe: Any, request: ImageRequest, **extra: Any) -> tuple[list[Image.Image], list[torch.Tensor]]:
    """The diffusers call our guidance rule maps ``request`` to (see diptych.models.qwen_image.flow)."""
    trajectory: list[torch.Tensor] = []

    def record(_pipe: Any, _i: int, _t: Any, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        trajectory.append(tensors["latents"].clone())
        return {}

    negative = None
    if request.guidance_scale > 1:
        negative = request.negative_prompt if request.negative_prompt is not None else EMPTY_NEGATIVE_PROMPT
    images = pipe(
        prompt=request.prompt,
        negative_prompt=negative,
        true_cfg_scale=request.guidance_scale,
        num_inference_steps=request.num_inference_steps,
        height=request.height,
        width=request.width,
        num_images_per_prompt=request.n,
        generator=torch.Generator().manual_seed(request.seed),
        output_type="pil",
        callback_on_step_end=record,
        callback_on_step_end_tensor_inputs=["latents"],
        **extra,
    ).images
    return images, trajectory


def _pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image).astype(np.int16)


def _assert_same(ours: tuple[list, list], reference: tuple[list, list]) -> None:
    images, trajectory = ours
    ref_images, ref_trajectory = reference
    assert len(trajectory) == len(ref_trajectory)
    for step, (a, b) in enumerate(zip(trajectory, ref_trajectory, strict=True)):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4, msg=lambda m, s=step: f"step {s}: {m}")
    assert len(images) == len(ref_images)
    for a, b in zip(images, ref_images, strict=True):
        assert a.size == b.size
        assert np.abs(_pixels(a) - _pixels(b)).max() <= 1
    # n images of one request differ: each has its own slice of the seeded noise.
    assert np.abs(_pixels(images[0]) - _pixels(images[1])).mean() > 1.0


@pytest.mark.parametrize(
    "overrides",
    [{}, {"guidance_scale": 1.0, "negative_prompt": None}, {"negative_prompt": None}],
    ids=["cfg", "no-cfg", "cfg-default-negative"],
)
def test_generate_equals_diffusers(t2i_runner: QwenImageFlowRunner, t2i_pipeline: Any, overrides: dict) -> None:
    request = _request(**overrides)
    _assert_same(_run(t2i_runner, request), _reference(t2i_pipeline, request))


def test_generate_reacts_to_prompt_and_guidance(t2i_runner: QwenImageFlowRunner) -> None:
    base = _pixels(_run(t2i_runner, _request(n=1))[0][0])
    other_prompt = _pixels(_run(t2i_runner, _request(n=1, prompt="a blue square next to a green triangle"))[0][0])
    no_cfg = _pixels(_run(t2i_runner, _request(n=1, guidance_scale=1.0))[0][0])
    # Far above the 1-level tolerance of the equality tests: the equality is about the prompt.
    assert np.abs(base - other_prompt).mean() > 1.0 and np.abs(base - other_prompt).max() > 10
    assert np.abs(base - no_cfg).mean() > 1.0
    assert np.array_equal(base, _pixels(_run(t2i_runner, _request(n=1))[0][0]))


def _source() -> Image.Image:
    rng = np.random.default_rng(0)
    gradient = np.linspace(0, 255, 56, dtype=np.float32)[None, :, None] * np.ones((40, 1, 3), np.float32)
    noisy = gradient + rng.normal(0, 20, (40, 56, 3))
    return Image.fromarray(noisy.clip(0, 255).astype(np.uint8))


# Sources are brought to this area in the cheap tests (the pipeline's own 1024² costs seconds per VAE encode).
SMALL_SOURCE_AREA = 128 * 128


@pytest.fixture(scope="module")
def small_source_runner(tiny_qwen_image_edit_dir: Path) -> QwenImageFlowRunner:
    return QwenImageFlowRunner(tiny_qwen_image_edit_dir, "cpu", source_area=SMALL_SOURCE_AREA)


def test_edit_equals_diffusers(edit_runner: QwenImageFlowRunner, edit_pipeline: Any) -> None:
    """Guidance on, n=2, the source at the pipeline's own one-megapixel size."""
    source = _source()
    request = _request(prompt="make the sky blue", source_images=(source,), num_inference_steps=2)
    _assert_same(_run(edit_runner, request), _reference(edit_pipeline, request, image=source))


def test_edit_without_guidance_equals_diffusers(
    small_source_runner: QwenImageFlowRunner, edit_pipeline: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Guidance off, n=2; both sides bring the source to the same small area."""
    from diffusers.pipelines.qwenimage import pipeline_qwenimage_edit

    full_area = pipeline_qwenimage_edit.calculate_dimensions
    monkeypatch.setattr(
        pipeline_qwenimage_edit, "calculate_dimensions", lambda _area, ratio: full_area(SMALL_SOURCE_AREA, ratio)
    )
    source = _source()
    request = _request(
        prompt="make the sky blue", source_images=(source,), guidance_scale=1.0, negative_prompt=None, num_inference_steps=3
    )
    _assert_same(_run(small_source_runner, request), _reference(edit_pipeline, request, image=source))


def test_edit_reacts_to_source_image(small_source_runner: QwenImageFlowRunner) -> None:
    request = _request(prompt="make the sky blue", n=1, num_inference_steps=2, guidance_scale=1.0)
    red = _run(small_source_runner, replace(request, source_images=(Image.new("RGB", (56, 40), (220, 20, 20)),)))
    blue = _run(small_source_runner, replace(request, source_images=(Image.new("RGB", (56, 40), (20, 20, 220)),)))
    assert np.abs(_pixels(red[0][0]) - _pixels(blue[0][0])).mean() > 1.0


def test_edit_checkpoint_generates_like_qwen_image_pipeline(edit_runner: QwenImageFlowRunner, edit_pipeline: Any) -> None:
    """Without a source image an edit checkpoint runs the text-to-image pipeline on its own components."""
    from diffusers import QwenImagePipeline

    parts = ("scheduler", "vae", "text_encoder", "tokenizer", "transformer")
    pipe = QwenImagePipeline(**{name: getattr(edit_pipeline, name) for name in parts})
    pipe.prompt_template_encode_start_idx = edit_runner.prompt_encoder.generate_prefix_len
    pipe.set_progress_bar_config(disable=True)
    request = _request(num_inference_steps=2)
    _assert_same(_run(edit_runner, request), _reference(pipe, request))


def test_interleaved_requests_match_solo_runs(t2i_runner: QwenImageFlowRunner) -> None:
    first, second = _request(n=1), _request(n=1, prompt="a yellow star", width=32, height=32, seed=5, guidance_scale=1.0)
    a, b = t2i_runner.prepare([first, second])
    t2i_runner.step(a + b)  # one batch of both requests
    t2i_runner.step(a)  # then at different paces
    t2i_runner.step(a + b)
    t2i_runner.step(b)
    together = t2i_runner.decode(a + b)
    assert np.array_equal(_pixels(together[0]), _pixels(_run(t2i_runner, first)[0][0]))
    assert np.array_equal(_pixels(together[1]), _pixels(_run(t2i_runner, second)[0][0]))
    assert together[1].size == (32, 32)


def test_preview_decodes_predicted_clean_latent(t2i_runner: QwenImageFlowRunner) -> None:
    (states,) = t2i_runner.prepare([_request(n=1)])
    with pytest.raises(ValueError, match="no step"):
        t2i_runner.preview(states)
    t2i_runner.step(states)
    (early,) = t2i_runner.preview(states)
    assert early.size == (64, 48)
    while not states[0].done:
        t2i_runner.step(states)
    # The last step lands on sigma 0, where the predicted clean latent is the result itself.
    assert np.array_equal(_pixels(t2i_runner.preview(states)[0]), _pixels(t2i_runner.decode(states)[0]))
    assert np.abs(_pixels(early) - _pixels(t2i_runner.decode(states)[0])).mean() > 0
    with pytest.raises(ValueError, match="finished"):
        t2i_runner.step(states)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"width": 40}, "multiple of 16"),
        ({"source_images": (Image.new("RGB", (8, 8)),)}, "generates only"),
        ({"mask": Image.new("L", (8, 8))}, "mask"),
        ({"n": 0}, "must be >= 1"),
    ],
)
def test_invalid_requests_are_refused(t2i_runner: QwenImageFlowRunner, overrides: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        t2i_runner.check(_request(**overrides))
    with pytest.raises(ValueError, match=message):
        t2i_runner.prepare([_request(**overrides)])


def test_unseeded_requests_still_run(t2i_runner: QwenImageFlowRunner) -> None:
    (states,) = t2i_runner.prepare([_request(seed=None, n=1, num_inference_steps=1)])
    t2i_runner.step(states)
    assert t2i_runner.decode(states)[0].size == (64, 48)
