"""Patch packing and VAE normalisation against the pipeline's own static helpers."""

from __future__ import annotations

import torch
from diffusers import QwenImagePipeline

from diptych.models.qwen_image import latents as lat


def test_pack_and_unpack_match_pipeline_and_invert() -> None:
    noise = torch.randn(2, 1, 8, 6, 10, generator=torch.Generator().manual_seed(0))
    packed = lat.pack(noise)
    assert torch.equal(packed, QwenImagePipeline._pack_latents(noise, 2, 8, 6, 10))
    unpacked = lat.unpack(packed, 6, 10)
    # vae_scale_factor 8: a 48x80 image has a 6x10 latent.
    assert torch.equal(unpacked, QwenImagePipeline._unpack_latents(packed, 48, 80, 8))
    assert torch.equal(unpacked, noise.view(2, 8, 1, 6, 10))


def test_normalize_roundtrip() -> None:
    mean, std = [0.5, -1.0], [2.0, 0.25]
    latents = torch.randn(1, 2, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    normalized = lat.normalize(latents, mean, std)
    assert torch.allclose(normalized[:, 1], (latents[:, 1] + 1.0) / 0.25)
    assert torch.allclose(lat.denormalize(normalized, mean, std), latents, atol=1e-6)


def test_pixels_roundtrip_through_pil() -> None:
    pixels = torch.linspace(-1, 1, 3 * 4 * 5).view(1, 3, 4, 5)
    image = lat.pixels_to_pil(pixels)[0]
    assert image.size == (5, 4)
    back = lat.pil_to_pixels(image)
    assert back.shape == (1, 3, 1, 4, 5)
    assert torch.allclose(back[:, :, 0], pixels, atol=1 / 255)
