"""Batched prompt encoding (against diffusers' batched encode_prompt) and the embedding cache."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

from diptych.models.qwen_image.conditioning import TensorCache, image_digest
from diptych.models.qwen_image.flow import QwenImageFlowRunner
from diptych.types import ImageRequest

PROMPTS = ["a red circle", "a much longer prompt about a blue square next to a green triangle", "x"]


def test_batched_text_embeddings_equal_diffusers_batched_encode(t2i_runner: QwenImageFlowRunner, t2i_pipeline: Any) -> None:
    ours = t2i_runner.prompt_encoder.encode_texts(PROMPTS)
    reference, mask = t2i_pipeline.encode_prompt(PROMPTS, device=torch.device("cpu"))
    for row, embedding in enumerate(ours):
        length = int(mask[row].sum())
        assert embedding.embeds.shape == (1, length, reference.shape[2])
        assert torch.equal(embedding.embeds[0], reference[row, :length])
    # And each equals its prompt encoded alone (one batch row or one call: the same numbers).
    for prompt, embedding in zip(PROMPTS, ours, strict=True):
        torch.testing.assert_close(embedding.embeds, t2i_runner.prompt_encoder.encode_text(prompt).embeds,
                                   atol=1e-5, rtol=1e-5)


def test_batched_edit_embeddings_equal_solo_ones(edit_runner: QwenImageFlowRunner) -> None:
    encoder = edit_runner.prompt_encoder
    pairs = [(PROMPTS[0], Image.new("RGB", (84, 56), (200, 20, 20))), (PROMPTS[1], Image.new("RGB", (56, 112), (0, 0, 255)))]
    batched = encoder.encode_with_images(pairs)
    # 1e-4, not the text test's 1e-5: batched edit rows take another float32 reduction order than solo ones
    # (2 of 2,304 values off by 1.3e-5 on torch 2.13 / transformers 5.19, against values of order 1).
    for (prompt, image), embedding in zip(pairs, batched, strict=True):
        torch.testing.assert_close(embedding.embeds, encoder.encode_with_image(prompt, image).embeds,
                                   atol=1e-4, rtol=1e-4)
    assert batched[0].num_tokens != batched[1].num_tokens


class Counter:
    def __init__(self, module: Any) -> None:
        self.calls: list[int] = []
        self._forward = module.forward

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls.append(int(kwargs["input_ids"].shape[0]))
        return self._forward(*args, **kwargs)


@pytest.fixture
def vlm_calls(tiny_qwen_image_edit_dir: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[QwenImageFlowRunner, Counter]:
    runner = QwenImageFlowRunner(tiny_qwen_image_edit_dir, "cpu", source_area=64 * 64)
    text_encoder = runner.prompt_encoder._text_encoder
    counter = Counter(text_encoder)
    monkeypatch.setattr(text_encoder, "forward", counter)
    return runner, counter


def _request(rid: str, prompt: str, seed: int, **extra: Any) -> ImageRequest:
    return ImageRequest(request_id=rid, prompt=prompt, width=32, height=32, seed=seed, num_inference_steps=1,
                        negative_prompt="blurry", **extra)


def test_prompts_admitted_together_are_encoded_in_one_forward_and_then_cached(
    vlm_calls: tuple[QwenImageFlowRunner, Counter],
) -> None:
    runner, counter = vlm_calls
    first = runner.prepare([_request("a", "a red circle", 1), _request("b", "a blue square", 2)])
    # Three distinct prompts (two positives, the shared negative) in one forward.
    assert counter.calls == [3]
    # Resubmitted with new seeds: nothing to encode; a new prompt alone is encoded alone.
    again = runner.prepare([_request("c", "a red circle", 3), _request("d", "a green star", 4)])
    assert counter.calls == [3, 1]
    assert again[0][0].cond.embeds is first[0][0].cond.embeds
    assert not torch.equal(again[0][0].latents, first[0][0].latents)  # new seed, new noise
    assert runner.conditioner.cache.hits == 2  # "a red circle" and "blurry"


def test_edit_embeddings_are_keyed_by_source_image(vlm_calls: tuple[QwenImageFlowRunner, Counter]) -> None:
    runner, counter = vlm_calls
    red, blue = Image.new("RGB", (64, 64), (255, 0, 0)), Image.new("RGB", (64, 64), (0, 0, 255))
    assert image_digest(red) != image_digest(blue) and image_digest(red) == image_digest(red.copy())
    states = runner.prepare([_request("a", "make it green", 1, source_images=(red,)),
                             _request("b", "make it green", 2, source_images=(blue,)),
                             _request("c", "make it green", 3)])
    assert counter.calls == [2, 4]  # the text-only prompt and its negative, then the four prompts with images
    assert not torch.equal(states[0][0].cond.embeds, states[1][0].cond.embeds)
    runner.prepare([_request("d", "make it green", 4, source_images=(red.copy(),))])
    assert counter.calls == [2, 4]  # same pixels, same key: cached


def test_tensor_cache_evicts_least_recently_used_past_its_byte_budget() -> None:
    cache = TensorCache(max_bytes=3 * 400)  # three 100-float tensors
    for key in "abc":
        cache.put(key, torch.zeros(100))
    assert cache.get("a") is not None  # a is now the most recent
    cache.put("d", torch.zeros(100))
    assert cache.get("b") is None and cache.get("a") is not None and len(cache) == 3
    cache.put("huge", torch.zeros(1000))  # larger than the whole cache: not kept, nothing evicted
    assert cache.get("huge") is None and len(cache) == 3 and cache.bytes == 1200
