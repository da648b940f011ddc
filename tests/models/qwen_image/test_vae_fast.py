"""The VAE's single-frame fast paths compute what the original modules compute."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from diptych.models.qwen_image.vae_fast import install_single_frame_paths


@pytest.fixture(scope="module")
def vaes(tiny_qwen_image_dir: Path) -> tuple[torch.nn.Module, torch.nn.Module]:
    from diffusers import AutoencoderKLQwenImage

    original = AutoencoderKLQwenImage.from_pretrained(tiny_qwen_image_dir / "vae").eval()
    fast = copy.deepcopy(original)
    # Every causal conv (3x3x3 and 1x1x1; the temporal-downsample conv keeps its stride-2 path) and norm.
    assert install_single_frame_paths(fast) > 20
    return original, fast


def test_image_decode_and_encode_equal_the_original(vaes: tuple[torch.nn.Module, torch.nn.Module]) -> None:
    original, fast = vaes
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(3, 8, 1, 6, 10, generator=generator)
    pixels = torch.rand(2, 3, 1, 48, 80, generator=generator) * 2 - 1
    with torch.inference_mode():
        torch.testing.assert_close(fast.decode(latents).sample, original.decode(latents).sample, atol=2e-5, rtol=1e-4)
        torch.testing.assert_close(fast.encode(pixels).latent_dist.mode(), original.encode(pixels).latent_dist.mode(),
                                   atol=2e-5, rtol=1e-4)


def test_video_frames_keep_the_original_path(vaes: tuple[torch.nn.Module, torch.nn.Module]) -> None:
    original, fast = vaes
    latents = torch.randn(1, 8, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        torch.testing.assert_close(fast.decode(latents).sample, original.decode(latents).sample, atol=2e-5, rtol=1e-4)


def test_half_precision_norm_is_computed_in_float32(vaes: tuple[torch.nn.Module, torch.nn.Module]) -> None:
    from diffusers.models.autoencoders.autoencoder_kl_qwenimage import QwenImageRMS_norm

    original, fast = vaes
    norms = [(a, b) for a, b in zip(original.modules(), fast.modules(), strict=True) if isinstance(a, QwenImageRMS_norm)]
    reference, rewritten = norms[0]
    # Squares of these overflow float16 (max 65504): computed in float16 the norm would be inf.
    x = (torch.randn(2, reference.gamma.shape[0], 1, 4, 4) * 300).to(torch.float16)
    out = rewritten(x)
    assert torch.isfinite(out).all() and out.dtype == reference(x).dtype
    torch.testing.assert_close(out, reference(x), atol=1e-3, rtol=1e-3)
