"""Latent layout of Qwen-Image: 2x2 patch packing, VAE normalisation, and pixel conversion.

Pure tensor functions; each mirrors the corresponding step of diffusers' Qwen-Image pipelines
(``_pack_latents``, ``_unpack_latents``, ``_encode_vae_image``, the decode stage and
``VaeImageProcessor``) so that our outputs match theirs bit for bit on the same inputs.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

# The transformer sees the VAE latent as a sequence of 2x2 patches.
PATCH = 2


def pack(latents: torch.Tensor) -> torch.Tensor:
    """``[B, C, 1, H, W]`` (or ``[B, 1, C, H, W]``) latents → ``[B, (H/2)*(W/2), C*4]`` patch tokens."""
    batch, height, width = latents.shape[0], latents.shape[-2], latents.shape[-1]
    channels = latents.numel() // (batch * height * width)
    patches = latents.reshape(batch, channels, height // PATCH, PATCH, width // PATCH, PATCH)
    patches = patches.permute(0, 2, 4, 1, 3, 5)
    return patches.reshape(batch, (height // PATCH) * (width // PATCH), channels * PATCH * PATCH)


def unpack(tokens: torch.Tensor, latent_height: int, latent_width: int) -> torch.Tensor:
    """``[B, (H/2)*(W/2), C*4]`` patch tokens → ``[B, C, 1, H, W]`` VAE latents."""
    batch, _, packed_channels = tokens.shape
    channels = packed_channels // (PATCH * PATCH)
    grid = tokens.view(batch, latent_height // PATCH, latent_width // PATCH, channels, PATCH, PATCH)
    grid = grid.permute(0, 3, 1, 4, 2, 5)
    return grid.reshape(batch, channels, 1, latent_height, latent_width)


def _stats(values: list[float], like: torch.Tensor) -> torch.Tensor:
    return torch.tensor(values).view(1, len(values), 1, 1, 1).to(like.device, like.dtype)


def normalize(latents: torch.Tensor, mean: list[float], std: list[float]) -> torch.Tensor:
    """VAE latent → the standardised space the transformer works in."""
    return (latents - _stats(mean, latents)) / _stats(std, latents)


def denormalize(latents: torch.Tensor, mean: list[float], std: list[float]) -> torch.Tensor:
    """Inverse of :func:`normalize`; divides by ``1/std`` because the pipeline does, keeping results bit-identical."""
    return latents / (1.0 / _stats(std, latents)) + _stats(mean, latents)


def pil_to_pixels(image: Image.Image) -> torch.Tensor:
    """An RGB PIL image → ``[1, 3, 1, H, W]`` float32 in [-1, 1], the VAE's input."""
    array = np.array(image.convert("RGB")).astype(np.float32) / 255.0
    pixels = torch.from_numpy(array.transpose(2, 0, 1)[None].copy())
    return (2.0 * pixels - 1.0).unsqueeze(2)


def pixels_to_pil(pixels: torch.Tensor) -> list[Image.Image]:
    """VAE output frames ``[B, 3, H, W]`` in [-1, 1] → PIL images (rounding as ``VaeImageProcessor``)."""
    unit = (pixels * 0.5 + 0.5).clamp(0, 1)
    array = unit.cpu().permute(0, 2, 3, 1).float().numpy()
    array = (array * 255).round().astype("uint8")
    return [Image.fromarray(frame) for frame in array]
