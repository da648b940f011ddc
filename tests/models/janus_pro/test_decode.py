"""VQ decoding on the flow worker: batched decode matches transformers' per-image decode; requests are checked."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from diptych.models.janus_pro.decode import JanusDecodeRunner
from diptych.types import ImageRequest


def test_batched_decode_equals_transformers(tiny_janus_dir: Path) -> None:
    from transformers import JanusForConditionalGeneration

    runner = JanusDecodeRunner(tiny_janus_dir, "cpu")
    generator = torch.Generator().manual_seed(0)
    codes = [tuple(torch.randint(0, runner.num_codes, (16,), generator=generator).tolist()) for _ in range(3)]
    request = ImageRequest("r", "p", 64, 64, n=3, image_codes=tuple(codes))
    runner.check(request)
    (states,) = runner.prepare([request])
    runner.step(states)
    images = runner.decode(states)

    model = JanusForConditionalGeneration.from_pretrained(tiny_janus_dir).eval()
    for code, image in zip(codes, images, strict=True):
        with torch.no_grad():
            pixels = model.decode_image_tokens(torch.tensor([code]))[0].float().numpy()
        expected = np.clip((pixels + 1) / 2 * 255, 0, 255).astype(np.uint8)
        assert image.size == (64, 64)
        # Batched convolutions and truncation to uint8: within one level of 255.
        assert np.abs(np.asarray(image).astype(int) - expected).max() <= 1
    assert not np.array_equal(np.asarray(images[0]), np.asarray(images[1]))


def test_bf16_decode_is_within_bf16_noise_of_transformers(tiny_janus_dir: Path) -> None:
    """As tests/models/qwen_image/test_bf16.py: no further from transformers' bf16 decode than
    that decode is from its own float32 one, and at most 2 levels on average, 16 at worst."""
    from transformers import JanusForConditionalGeneration

    runner = JanusDecodeRunner(tiny_janus_dir, "cpu", "bfloat16")
    assert {p.dtype for p in runner.vq.parameters()} == {torch.bfloat16}
    generator = torch.Generator().manual_seed(0)
    codes = [tuple(torch.randint(0, runner.num_codes, (16,), generator=generator).tolist()) for _ in range(2)]
    request = ImageRequest("r", "p", 64, 64, n=2, image_codes=tuple(codes))
    (states,) = runner.prepare([request])
    runner.step(states)
    ours = [np.asarray(image).astype(int) for image in runner.decode(states)]

    def reference(dtype: torch.dtype) -> list[np.ndarray]:
        model = JanusForConditionalGeneration.from_pretrained(tiny_janus_dir, dtype=dtype).eval()
        with torch.no_grad():
            pixels = [model.decode_image_tokens(torch.tensor([c]))[0].float().numpy() for c in codes]
        return [np.clip((p + 1) / 2 * 255, 0, 255).astype(np.uint8).astype(int) for p in pixels]

    for mine, bf16, fp32 in zip(ours, reference(torch.bfloat16), reference(torch.float32), strict=True):
        noise, gap = np.abs(bf16 - fp32), np.abs(mine - bf16)
        assert noise.max() > 0
        assert gap.mean() <= 2.0 and gap.max() <= 16, (gap.mean(), gap.max())
        assert gap.mean() <= noise.mean(), (gap.mean(), noise.mean())


def test_check_refuses_requests_without_codes(tiny_janus_dir: Path) -> None:
    runner = JanusDecodeRunner(tiny_janus_dir, "cpu")
    with pytest.raises(ValueError, match="AR tokens"):
        runner.check(ImageRequest("r", "p", 64, 64))
    with pytest.raises(ValueError, match="16 codes"):
        runner.check(ImageRequest("r", "p", 64, 64, image_codes=((1, 2, 3),)))
