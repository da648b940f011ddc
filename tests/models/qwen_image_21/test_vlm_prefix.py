"""VLM prefix reuse on the tiny Qwen-Image 2.1: the diffusers pipeline's encoding, continued from a cache."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from diptych import compat
from diptych.models.qwen_image_21.tiny import OUTPUT_RESOLUTION
from diptych.models.qwen_image_21.vlm_prefix import VISION_END, VLMPrefixEncoder, render_prompt, vision_prefix_end
from tests.conftest import TinyCheckpoint

INSTRUCTION = "make it blue"
OTHER_INSTRUCTION = "a cat wearing a hat on a red sofa"
# Prefix and tail must match a full run; measured bit-identical on CPU (fp32 and bf16).
EXACT = {"rtol": 1e-5, "atol": 1e-4}


@pytest.fixture(scope="module")
def pipe(tiny_checkpoint: TinyCheckpoint) -> Any:
    compat.install()  # Qwen3VLProcessor wants torchvision otherwise
    from diffusers import QwenImage21Pipeline

    tiny_dir: Path = tiny_checkpoint("qwen-image-2.1")
    return QwenImage21Pipeline.from_pretrained(tiny_dir)


@pytest.fixture(scope="module")
def encoder(pipe: Any) -> VLMPrefixEncoder:
    return VLMPrefixEncoder(pipe.text_encoder, pipe.processor)


def _references(pipe: Any, count: int) -> list[Image.Image]:
    """``count`` RGBA references resized as the pipeline's ``__call__`` resizes them.

    At the tiny size the first is 2 x 2 merged cells, the second (wide) 3 x 1.
    """
    from diffusers.pipelines.qwenimage21.pipeline_qwenimage21 import calculate_dimensions

    noise = (np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8)
    images = [Image.fromarray(noise), Image.new("RGB", (128, 64), (200, 30, 30))][:count]
    resized = []
    for image in images:
        width, height, _ = calculate_dimensions(OUTPUT_RESOLUTION**2, image.width / image.height)
        resized.append(pipe.image_processor.resize(image.convert("RGBA"), width=width, height=height))
    return resized


def _rgb(images: list[Image.Image]) -> list[Image.Image]:
    # Opaque, so this is the pipeline's composite onto white.
    return [image.convert("RGB") for image in images]


@pytest.mark.parametrize("count", [0, 1, 2])
def test_full_run_is_the_pipelines_encoding(pipe: Any, encoder: VLMPrefixEncoder, count: int) -> None:
    references = _references(pipe, count)
    expected, _, image_pad_mask = pipe.encode_prompt(INSTRUCTION, image=references or None, device="cpu")
    hidden, prefix = encoder.encode(render_prompt(INSTRUCTION, count), _rgb(references))
    assert prefix is None
    torch.testing.assert_close(hidden[pipe._drop_idx:], expected[0], rtol=0, atol=0)
    # The caller finds image positions in the token ids it can get from tokenize().
    ids = torch.tensor(encoder.tokenize(render_prompt(INSTRUCTION, count), _rgb(references)))
    assert torch.equal(image_pad_mask[0], ids[pipe._drop_idx:] == pipe._img_token_id)
    assert image_pad_mask.any() == bool(count)


@pytest.mark.parametrize("count", [1, 2])
def test_prefix_and_tail_equal_a_full_run(pipe: Any, encoder: VLMPrefixEncoder, count: int) -> None:
    images = _rgb(_references(pipe, count))
    first = render_prompt(INSTRUCTION, count)
    _, prefix = encoder.encode(first, images, vision_prefix_end(first))
    assert prefix is not None
    assert prefix.token_ids[-1] == pipe.processor.tokenizer.convert_tokens_to_ids(VISION_END)
    # The square image takes 2 positions for its 4 tokens: text positions are not token indices.
    assert prefix.rope_delta == -2
    # The model's own rope_deltas (set by whichever prompt it ran last) must not matter.
    pipe.text_encoder.model.rope_deltas = None
    for instruction in (INSTRUCTION, OTHER_INSTRUCTION):
        text = render_prompt(instruction, count)
        full, _ = encoder.encode(text, images)
        assert list(prefix.token_ids) == encoder.tokenize(text, images)[: prefix.num_tokens]
        torch.testing.assert_close(prefix.hidden_states, full[: prefix.num_tokens], **EXACT)
        tail = encoder.encode_suffix(text, prefix)
        assert tail.shape == full[prefix.num_tokens:].shape
        torch.testing.assert_close(tail, full[prefix.num_tokens:], **EXACT)
    # The comparison can fail: text positions continued without the images' delta differ.
    plain = dataclasses.replace(prefix, rope_delta=0)
    assert (encoder.encode_suffix(text, plain) - full[prefix.num_tokens:]).abs().max() > 0.1


def test_tail_runs_neither_vision_tower_nor_prefix(
    pipe: Any, encoder: VLMPrefixEncoder, monkeypatch: pytest.MonkeyPatch
) -> None:
    images = _rgb(_references(pipe, 2))
    first, second = render_prompt(INSTRUCTION, 2), render_prompt(OTHER_INSTRUCTION, 2)
    _, prefix = encoder.encode(first, images, vision_prefix_end(first))
    assert prefix is not None
    keys = [k.clone() for k in prefix.keys]

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the vision tower ran")

    monkeypatch.setattr(pipe.text_encoder.model.visual, "forward", refuse)
    embedded: list[int] = []
    model = pipe.text_encoder.model.language_model
    handle = model.embed_tokens.register_forward_hook(lambda module, args, output: embedded.append(args[0].shape[1]))
    try:
        tail = encoder.encode_suffix(second, prefix)
    finally:
        handle.remove()
    assert embedded == [tail.shape[0]] == [len(encoder.tokenize(second, images)) - prefix.num_tokens]
    # Continuing leaves the shared prefix as it was.
    for before, after in zip(keys, prefix.keys, strict=True):
        assert torch.equal(before, after)


def test_text_only_prefix(encoder: VLMPrefixEncoder) -> None:
    # Without images the shareable part is the system turn and the user header; the header's
    # "user\n" is no added token, so the prefix ends at its <|im_start|>.
    first, second = render_prompt(INSTRUCTION, 0), render_prompt(OTHER_INSTRUCTION, 0)
    assert vision_prefix_end(first) is None
    end = first.index("<|im_start|>user") + len("<|im_start|>")
    _, prefix = encoder.encode(first, [], end)
    assert prefix is not None and prefix.rope_delta == 0
    full, _ = encoder.encode(second, [])
    torch.testing.assert_close(encoder.encode_suffix(second, prefix), full[prefix.num_tokens:], **EXACT)


def test_prefix_size_and_refusals(pipe: Any, encoder: VLMPrefixEncoder) -> None:
    images = _rgb(_references(pipe, 2))
    text = render_prompt(INSTRUCTION, 2)
    _, prefix = encoder.encode(text, images, vision_prefix_end(text))
    assert prefix is not None
    text_config = pipe.text_encoder.config.text_config
    per_token = 2 * text_config.num_hidden_layers * text_config.num_key_value_heads * text_config.head_dim
    assert prefix.nbytes == prefix.num_tokens * (per_token + text_config.hidden_size) * 4  # float32
    assert encoder.encode_suffix(prefix.text, prefix).shape == (0, text_config.hidden_size)
    with pytest.raises(ValueError, match="does not start with"):
        encoder.encode_suffix(render_prompt(INSTRUCTION, 1), prefix)
    # Ending after the first image leaves the second in the tail, which a tail cannot hold.
    with pytest.raises(ValueError, match="holds an image"):
        encoder.encode(text, images, text.index(VISION_END) + len(VISION_END))
    # Ending inside plain text: the tokens after it could merge with the ones before.
    with pytest.raises(ValueError, match="added tokens"):
        encoder.encode(text, images, len(text) - len("blue<|im_end|>\n<|im_start|>assistant\n"))
