"""Batched VAE decoding: grouping by size, chunking by pixels, tiling for large images."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from diptych.models.qwen_image import latents as lat
from diptych.models.qwen_image.decode import DecodeItem, LatentDecoder, plan_chunks
from diptych.models.qwen_image.flow import QwenImageFlowRunner


def _item(height: int, width: int, seed: int = 0, channels: int = 8) -> DecodeItem:
    generator = torch.Generator().manual_seed(seed)
    return DecodeItem(torch.randn(1, (height // 16) * (width // 16), channels * 4, generator=generator), height, width)


def test_plan_groups_by_size_chunks_by_pixels_and_tiles_large_images() -> None:
    items = [_item(32, 32), _item(64, 64), _item(32, 32), _item(32, 32), _item(512, 512), _item(64, 64)]
    plan = plan_chunks(items, max_batch_pixels=2 * 32 * 32, tile_above_pixels=256 * 256)
    assert plan == [([0, 2], False), ([3], False), ([1], False), ([5], False), ([4], True)]


def _pixels(images: list[Any]) -> list[np.ndarray]:
    return [np.asarray(image).astype(np.int16) for image in images]


def test_batched_decode_equals_decoding_one_at_a_time(t2i_runner: QwenImageFlowRunner) -> None:
    decoder = t2i_runner.decoder
    items = [_item(32, 48, 1), _item(64, 32, 2), _item(32, 48, 3), _item(32, 32, 4)]
    batched = decoder.decode(items)
    assert [image.size for image in batched] == [(48, 32), (32, 64), (48, 32), (32, 32)]
    for together, alone in zip(_pixels(batched), _pixels([decoder.decode([item])[0] for item in items]), strict=True):
        assert np.abs(together - alone).max() <= 1


def test_large_images_are_decoded_in_tiles(t2i_runner: QwenImageFlowRunner, monkeypatch: pytest.MonkeyPatch) -> None:
    vae = t2i_runner._parts.vae
    tiled_calls: list[tuple[int, ...]] = []
    tiled_decode = vae.tiled_decode

    def spy(z: torch.Tensor, **kwargs: Any) -> Any:
        tiled_calls.append(tuple(z.shape))
        return tiled_decode(z, **kwargs)

    monkeypatch.setattr(vae, "tiled_decode", spy)
    decoder = LatentDecoder(vae, 8, tile_above_pixels=256 * 256)
    large, small = _item(320, 288, 5), _item(64, 64, 6)
    images = decoder.decode([large, small])
    assert tiled_calls == [(1, 8, 1, 40, 36)]  # only the large one, alone
    latents = lat.denormalize(lat.unpack(large.packed, 40, 36), vae.config.latents_mean, vae.config.latents_std)
    with torch.inference_mode():
        expected = lat.pixels_to_pil(tiled_decode(latents, return_dict=False)[0][:, :, 0])[0]
    assert images[0].size == (288, 320) and np.array_equal(np.asarray(images[0]), np.asarray(expected))
    assert images[1].size == (64, 64)
