"""Prompt encoding: the computed template prefix, and embeddings equal to diffusers' encode_prompt."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from PIL import Image

from diptych.models.qwen_image.flow import QwenImageFlowRunner
from diptych.models.qwen_image.prompt import (
    EDIT_TEMPLATE,
    GENERATE_TEMPLATE,
    prefix_token_count,
    template_prefix,
)

PROMPT = "a red circle on a white background"


def test_prefix_is_system_turn_and_user_header() -> None:
    for template in (GENERATE_TEMPLATE, EDIT_TEMPLATE):
        prefix = template_prefix(template)
        assert prefix.startswith("<|im_start|>system\n") and prefix.endswith("<|im_end|>\n<|im_start|>user\n")
        assert template.startswith(prefix) and "{}" not in prefix and "<|vision_start|>" not in prefix


def test_generate_prefix_drops_exactly_the_template_prefix(t2i_runner: QwenImageFlowRunner) -> None:
    tokenizer = t2i_runner.prompt_encoder.tokenizer
    drop = t2i_runner.prompt_encoder.generate_prefix_len
    ids = tokenizer(GENERATE_TEMPLATE.format(PROMPT))["input_ids"]
    assert tokenizer.decode(ids[:drop]) == template_prefix(GENERATE_TEMPLATE)
    assert tokenizer.decode(ids[drop:]) == PROMPT + "<|im_end|>\n<|im_start|>assistant\n"
    # The tiny tokenizer is not the real one: diffusers' hard-coded 34 would cut elsewhere.
    assert drop != 34


def test_edit_prefix_drops_exactly_the_template_prefix(edit_runner: QwenImageFlowRunner) -> None:
    processor: Any = edit_runner.prompt_encoder.processor
    drop = edit_runner.prompt_encoder.edit_prefix_len
    inputs = processor(text=[EDIT_TEMPLATE.format(PROMPT)], images=Image.new("RGB", (64, 64)), return_tensors="pt")
    ids = inputs["input_ids"][0].tolist()
    assert processor.tokenizer.decode(ids[:drop]) == template_prefix(EDIT_TEMPLATE)
    # What is kept starts with the source image's vision tokens, then the instruction.
    assert ids[drop] == processor.tokenizer.convert_tokens_to_ids("<|vision_start|>")
    assert processor.tokenizer.decode(ids[drop:]).endswith(PROMPT + "<|im_end|>\n<|im_start|>assistant\n")


def test_prefix_count_refuses_a_tokenizer_that_merges_across_the_boundary() -> None:
    class Merging:
        def __call__(self, text: str) -> dict[str, list[int]]:
            # Tokenises the prefix alone differently from the prefix inside the full prompt.
            return {"input_ids": [1, 2, 3] if text.endswith("user\n") else [1, 2, 4, 5]}

    with pytest.raises(ValueError, match="prefix"):
        prefix_token_count(Merging(), GENERATE_TEMPLATE)


def test_text_embeddings_equal_diffusers(t2i_runner: QwenImageFlowRunner, t2i_pipeline: Any) -> None:
    ours = t2i_runner.prompt_encoder.encode_text(PROMPT).embeds
    reference, mask = t2i_pipeline.encode_prompt(PROMPT, device=torch.device("cpu"))
    assert mask is None  # one prompt, no padding
    assert torch.equal(ours, reference)
    other = t2i_runner.prompt_encoder.encode_text("a blue square").embeds
    assert other.shape != ours.shape or not torch.allclose(other, ours)


def test_image_embeddings_equal_diffusers(edit_runner: QwenImageFlowRunner, edit_pipeline: Any) -> None:
    image = Image.new("RGB", (96, 64), (30, 200, 40))
    ours = edit_runner.prompt_encoder.encode_with_image(PROMPT, image).embeds
    reference, _ = edit_pipeline.encode_prompt(PROMPT, image=image, device=torch.device("cpu"))
    assert torch.equal(ours, reference)
    other_image = edit_runner.prompt_encoder.encode_with_image(PROMPT, Image.new("RGB", (96, 64), (200, 30, 40)))
    assert not torch.allclose(other_image.embeds, ours)
