"""Prefixes reused across requests: computed once, equal results, bounded bytes, nothing left behind."""

from __future__ import annotations

import gc
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from diptych.models.qwen_image_21 import flow as flow_module
from diptych.models.qwen_image_21.flow import QwenImage21FlowRunner
from diptych.models.qwen_image_21.packed import PrefixKV
from diptych.models.qwen_image_21.prefix_cache import PrefixCache
from diptych.models.qwen_image_21.tiny import OUTPUT_RESOLUTION
from diptych.types import ImageRequest
from tests.conftest import TinyCheckpoint
from tests.models.qwen_image_21.test_flow import assert_close, reference, run

PICTURE = Image.new("RGB", (96, 64), (200, 120, 30))
OTHER = Image.new("RGBA", (64, 64), (30, 60, 220, 200))


def _chunk(size: int) -> PrefixKV:
    return PrefixKV(size, torch.zeros(size // 4, dtype=torch.float32))  # size bytes of pending inputs


def test_lru_counts_shared_chunks_once_and_evicts_the_oldest() -> None:
    cache = PrefixCache(budget_bytes=1000)
    shared, first, second = _chunk(400), _chunk(200), _chunk(200)
    cache.put("a", (shared, first))
    cache.put("b", (shared, second))
    assert cache.nbytes() == 800  # the shared chunk once
    assert cache.get("a") == (shared, first)  # "a" is now the most recent
    assert cache.get("missing") is None
    cache.put("c", (_chunk(400),))  # 1200 > 1000: "b" goes first, as the least recent
    assert cache.get("b") is None and cache.get("a") is not None
    stats = cache.stats()
    assert (stats.hits, stats.misses, stats.entries, stats.bytes) == (2, 2, 2, 1000)
    with pytest.raises(ValueError, match=">= 0"):
        PrefixCache(-1)


@pytest.fixture()
def runner(tiny_checkpoint: TinyCheckpoint) -> QwenImage21FlowRunner:
    """A fresh runner per test: the cache starts empty."""
    return QwenImage21FlowRunner(tiny_checkpoint("qwen-image-2.1"), output_resolution=OUTPUT_RESOLUTION)


@pytest.fixture(scope="module")
def pipe(tiny_checkpoint: TinyCheckpoint) -> Any:
    from diffusers import QwenImage21Pipeline

    return QwenImage21Pipeline.from_pretrained(tiny_checkpoint("qwen-image-2.1"))


class _Work:
    """Counts the vision tower's and the VAE encoder's calls, and the tokens each chunk fill runs."""

    def __init__(self, runner: QwenImage21FlowRunner, monkeypatch: pytest.MonkeyPatch) -> None:
        self.vision = self.vae = 0
        self.filled: list[int] = []
        visual = runner.pipeline.text_encoder.model.visual
        vae = runner.pipeline.vae
        original_visual, original_encode = visual.forward, vae.encode

        def count_visual(*args: Any, **kwargs: Any) -> Any:
            self.vision += 1
            return original_visual(*args, **kwargs)

        def count_encode(*args: Any, **kwargs: Any) -> Any:
            self.vae += 1
            return original_encode(*args, **kwargs)

        monkeypatch.setattr(visual, "forward", count_visual)
        monkeypatch.setattr(vae, "encode", count_encode)
        original_forward = flow_module.packed_forward

        def count_rows(transformer: Any, rows: Any, backend: str = "auto") -> Any:
            self.filled += [chunk.length for row in rows for chunk in row.filled]
            return original_forward(transformer, rows, backend)

        monkeypatch.setattr(flow_module, "packed_forward", count_rows)


def _edit(prompt: str, seed: int, references: tuple[Image.Image, ...] = (PICTURE,)) -> ImageRequest:
    return ImageRequest(f"edit-{seed}", prompt, 64, 64, seed=seed, num_inference_steps=3, guidance_scale=3.0,
                        source_images=references)


def test_a_second_edit_of_the_same_pictures_skips_their_vlm_vae_and_transformer_work(
    runner: QwenImage21FlowRunner, pipe: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    work = _Work(runner, monkeypatch)
    first, second = _edit("make it blue", 1, (PICTURE, OTHER)), _edit("turn it upside down please", 2, (PICTURE, OTHER))
    (first_images,) = run(runner, [first])
    assert work.vision == 1 and work.vae == 2  # one VLM pass over both pictures (both branches), each encoded once
    head = len(work.filled) and work.filled[0]
    work.filled.clear()

    (second_images,) = run(runner, [second])
    assert work.vision == 1 and work.vae == 2  # neither ran again
    # Only the new instruction: the negative branch (" ", as in the first edit) is a whole hit.
    assert len(work.filled) == 1 and work.filled[0] < head
    assert runner.cache_stats()["prefix"].hits >= 2  # the pictures' chunk, and the negative branch
    assert_close(first_images, reference(pipe, first))
    assert_close(second_images, reference(pipe, second))


def test_a_hit_changes_no_pixel(runner: QwenImage21FlowRunner, tiny_checkpoint: TinyCheckpoint) -> None:
    uncached = QwenImage21FlowRunner(tiny_checkpoint("qwen-image-2.1"), output_resolution=OUTPUT_RESOLUTION,
                                     cache_bytes=0)
    warm = _edit("make it blue", 3)
    request = ImageRequest("again", "make it red", 64, 96, n=2, seed=4, num_inference_steps=3,
                           negative_prompt="dark", source_images=(PICTURE,))
    run(runner, [warm])
    (hit,) = run(runner, [request])
    (miss,) = run(uncached, [request])
    assert runner.cache_stats()["prefix"].hits > 0 and uncached.cache_stats()["prefix"].hits == 0
    for ours, theirs in zip(hit, miss, strict=True):
        assert np.array_equal(np.asarray(ours), np.asarray(theirs))


def test_a_shared_negative_prompt_is_encoded_once(runner: QwenImage21FlowRunner, monkeypatch: pytest.MonkeyPatch) -> None:
    encoded: list[str] = []
    original = runner._vlm.encode

    def spy(text: str, *args: Any, **kwargs: Any) -> Any:
        encoded.append(text)
        return original(text, *args, **kwargs)

    monkeypatch.setattr(runner._vlm, "encode", spy)
    requests = [ImageRequest(f"t{i}", f"a shape number {i}", 64, 64, seed=i, num_inference_steps=2,
                             negative_prompt="blurry, dark") for i in range(3)]
    run(runner, requests[:2])
    run(runner, requests[2:])
    negatives = [text for text in encoded if "blurry, dark" in text]
    assert len(encoded) == 4 and len(negatives) == 1  # three prompts, one negative


def test_the_cache_stays_within_its_budget_and_requests_leave_nothing(
    tiny_checkpoint: TinyCheckpoint,
) -> None:
    budget = 150_000  # about one of these requests' prefixes (139 kB, measured)
    runner = QwenImage21FlowRunner(tiny_checkpoint("qwen-image-2.1"), output_resolution=OUTPUT_RESOLUTION,
                                   cache_bytes=budget)
    requests = [_edit(f"instruction {i}", i, (Image.new("RGB", (64, 64), (i * 40, 0, 0)),)) for i in range(5)]
    # Three finish; two are dropped after one step (as a cancelled request's states are).
    run(runner, requests[:3])
    dropped = [s for group in runner.prepare(requests[3:]) for s in group]
    runner.step(dropped)
    assert runner.cache_stats()["prefix_live"].bytes > runner.cache_stats()["prefix"].bytes
    del dropped
    gc.collect()
    stats = runner.cache_stats()
    assert 0 < stats["prefix"].bytes <= budget
    assert stats["prefix_live"].bytes == stats["prefix"].bytes  # every chunk alive is the cache's


def test_without_a_cache_every_chunk_goes_with_its_request(tiny_checkpoint: TinyCheckpoint) -> None:
    runner = QwenImage21FlowRunner(tiny_checkpoint("qwen-image-2.1"), output_resolution=OUTPUT_RESOLUTION,
                                   cache_bytes=0)
    states = [s for group in runner.prepare([_edit("one", 1), _edit("two", 2)]) for s in group]
    runner.step(states)
    assert runner.cache_stats()["prefix_live"].bytes > 0
    del states
    gc.collect()
    assert runner.cache_stats()["prefix_live"].bytes == 0 and runner.cache_stats()["prefix"].bytes == 0
