"""``--dtype bfloat16``: our runner in bf16 against diffusers' pipelines in bf16, on the tiny checkpoints.

bf16 keeps 8 bits of mantissa. Our runner runs diffusers' own modules in another order: both
guidance branches share one forward, and prompts are padded to a common length. Each
reordering rounds differently at every layer, so bf16 results cannot be equal to 1/255 as the
float32 tests are.

The tolerance, on 8-bit pixels:
- at most 2 levels on average and 16 at the worst pixel;
- and no further from diffusers' bf16 image, on average, than that image is from diffusers' own
  float32 image. Ours must be within the noise bf16 itself brings.

Measured on these checkpoints, ours against the bf16 reference, then the bf16 reference
against the float32 one:

| | ours vs bf16 reference | bf16 vs float32 reference |
|---|---|---|
| text-to-image | 0.65 mean, 6 max | 16.5 mean, 104 max |
| edit | 0.84 mean, 7 max | 1.08 mean, 11 max |

A wrong dtype, or a computation that differs in more than rounding, lands tens of levels away.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from diptych.models.qwen_image.flow import EMPTY_NEGATIVE_PROMPT, QwenImageFlowRunner
from diptych.types import ImageRequest

SEED = 1234


def _request(**overrides: Any) -> ImageRequest:
    values: dict[str, Any] = {"request_id": "req", "prompt": "a red circle on a white background", "width": 64,
                              "height": 48, "n": 1, "num_inference_steps": 3, "guidance_scale": 4.0,
                              "negative_prompt": "blurry, dark", "seed": SEED}
    return ImageRequest(**{**values, **overrides})


def _ours(runner: QwenImageFlowRunner, request: ImageRequest) -> np.ndarray:
    (states,) = runner.prepare([request])
    while not states[0].done:
        runner.step(states)
    return np.asarray(runner.decode(states)[0]).astype(np.int16)


def _reference(pipe: Any, request: ImageRequest, **extra: Any) -> np.ndarray:
    negative = request.negative_prompt if request.negative_prompt is not None else EMPTY_NEGATIVE_PROMPT
    image = pipe(prompt=request.prompt, negative_prompt=negative, true_cfg_scale=request.guidance_scale,
                 num_inference_steps=request.num_inference_steps, height=request.height, width=request.width,
                 generator=torch.Generator().manual_seed(request.seed), output_type="pil", **extra).images[0]
    return np.asarray(image).astype(np.int16)


def _pipeline(cls: Any, model_dir: Path, dtype: torch.dtype, prefix_len: int) -> Any:
    pipe = cls.from_pretrained(model_dir, torch_dtype=dtype)
    pipe.prompt_template_encode_start_idx = prefix_len  # as the float32 tests: our computed prefix
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _assert_within_bf16_noise(ours: np.ndarray, reference_bf16: np.ndarray, reference_fp32: np.ndarray) -> None:
    noise = np.abs(reference_bf16 - reference_fp32)
    gap = np.abs(ours - reference_bf16)
    assert noise.max() > 0, "bf16 changed nothing in the reference: this comparison would show nothing"
    assert gap.mean() <= 2.0 and gap.max() <= 16, (gap.mean(), gap.max())
    assert gap.mean() <= noise.mean(), (gap.mean(), noise.mean())


@pytest.fixture(scope="module")
def bf16_t2i_runner(tiny_qwen_image_dir: Path) -> QwenImageFlowRunner:
    return QwenImageFlowRunner(tiny_qwen_image_dir, "cpu", dtype=torch.bfloat16)


def test_the_runner_holds_its_weights_in_bf16(bf16_t2i_runner: QwenImageFlowRunner) -> None:
    parts = bf16_t2i_runner._parts  # noqa: SLF001 - what the dtype setting reaches
    for module in (parts.transformer, parts.vae, parts.text_encoder):
        assert {p.dtype for p in module.parameters()} == {torch.bfloat16}


def test_generate_in_bf16_is_within_bf16_noise_of_diffusers(
    bf16_t2i_runner: QwenImageFlowRunner, t2i_runner: QwenImageFlowRunner, tiny_qwen_image_dir: Path
) -> None:
    from diffusers import QwenImagePipeline

    request = _request()
    prefix = t2i_runner.prompt_encoder.generate_prefix_len
    reference_bf16 = _reference(_pipeline(QwenImagePipeline, tiny_qwen_image_dir, torch.bfloat16, prefix), request)
    reference_fp32 = _reference(_pipeline(QwenImagePipeline, tiny_qwen_image_dir, torch.float32, prefix), request)
    _assert_within_bf16_noise(_ours(bf16_t2i_runner, request), reference_bf16, reference_fp32)


def test_edit_in_bf16_is_within_bf16_noise_of_diffusers(
    edit_runner: QwenImageFlowRunner, tiny_qwen_image_edit_dir: Path
) -> None:
    from diptych import compat

    compat.install()  # QwenImageEditPipeline loads Qwen2VLProcessor, which wants torchvision
    from diffusers import QwenImageEditPipeline

    rng = np.random.default_rng(0)
    source = Image.fromarray(rng.integers(0, 256, (40, 56, 3), dtype=np.uint8))
    request = _request(prompt="make the sky blue", source_images=(source,), num_inference_steps=2)
    prefix = edit_runner.prompt_encoder.edit_prefix_len
    runner = QwenImageFlowRunner(tiny_qwen_image_edit_dir, "cpu", dtype=torch.bfloat16)
    reference_bf16 = _reference(_pipeline(QwenImageEditPipeline, tiny_qwen_image_edit_dir, torch.bfloat16, prefix),
                                request, image=source)
    reference_fp32 = _reference(_pipeline(QwenImageEditPipeline, tiny_qwen_image_edit_dir, torch.float32, prefix),
                                request, image=source)
    _assert_within_bf16_noise(_ours(runner, request), reference_bf16, reference_fp32)
