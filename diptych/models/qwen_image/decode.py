"""VAE decoding of many packed latents at once: batched by size, chunked by pixels, tiled when large.

Latents of the same size are decoded together, in chunks of at most ``max_batch_pixels``
output pixels per VAE call, since the decoder's activations grow with pixels times batch.
An image above ``tile_above_pixels`` is decoded alone through the VAE's own overlapping-tile
decoder (``tiled_decode``), which bounds the activations by the tile size instead of the
image size; its seams are blended, so it differs slightly from an untiled decode, which is
why small images, and the equivalence tests, never take that path.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image

from diptych.models.qwen_image import latents as lat

logger = logging.getLogger(__name__)

# About 4 megapixels per VAE call (four 1024² images, or 1024 images of 64²).
DEFAULT_MAX_BATCH_PIXELS = 4 * 1024 * 1024
# Above about 1.2 megapixels (Qwen-Image's 1328² default and larger), decode in tiles.
DEFAULT_TILE_ABOVE_PIXELS = 1152 * 1152


@dataclass(frozen=True)
class DecodeItem:
    packed: torch.Tensor  # [1, patches, C*4]
    height: int
    width: int


def plan_chunks(
    items: Sequence[DecodeItem], max_batch_pixels: int, tile_above_pixels: int
) -> list[tuple[list[int], bool]]:
    """Positions of ``items`` per VAE call, and whether that call is tiled; same-size items share calls."""
    groups: dict[tuple[int, int], list[int]] = {}
    for position, item in enumerate(items):
        groups.setdefault((item.height, item.width), []).append(position)
    chunks: list[tuple[list[int], bool]] = []
    for (height, width), positions in groups.items():
        pixels = height * width
        if pixels > tile_above_pixels:
            chunks.extend(([p], True) for p in positions)
            continue
        per_call = max(1, max_batch_pixels // pixels)
        chunks.extend((positions[i : i + per_call], False) for i in range(0, len(positions), per_call))
    return chunks


class LatentDecoder:
    def __init__(
        self,
        vae: Any,
        scale_factor: int,
        *,
        max_batch_pixels: int = DEFAULT_MAX_BATCH_PIXELS,
        tile_above_pixels: int = DEFAULT_TILE_ABOVE_PIXELS,
    ) -> None:
        self._vae = vae
        self._scale = scale_factor
        self.max_batch_pixels = max_batch_pixels
        self.tile_above_pixels = tile_above_pixels

    @torch.inference_mode()
    def decode(self, items: Sequence[DecodeItem]) -> list[Image.Image]:
        """PIL images of ``items``, in order."""
        images: list[Image.Image | None] = [None] * len(items)
        for positions, tiled in plan_chunks(items, self.max_batch_pixels, self.tile_above_pixels):
            first = items[positions[0]]
            decoded = self._decode_same_size([items[p].packed for p in positions], first.height, first.width, tiled)
            for position, image in zip(positions, decoded, strict=True):
                images[position] = image
        return [image for image in images if image is not None]

    def _decode_same_size(self, packed: list[torch.Tensor], height: int, width: int, tiled: bool) -> list[Image.Image]:
        vae = self._vae
        latents = lat.unpack(torch.cat(packed, dim=0), height // self._scale, width // self._scale).to(vae.dtype)
        latents = lat.denormalize(latents, vae.config.latents_mean, vae.config.latents_std)
        if tiled:
            logger.debug("tiled VAE decode of a %dx%d image", width, height)
            frames = vae.tiled_decode(latents, return_dict=False)[0][:, :, 0]
        else:
            frames = vae.decode(latents, return_dict=False)[0][:, :, 0]
        return lat.pixels_to_pil(frames)
