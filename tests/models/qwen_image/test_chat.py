"""Rendering chats for Qwen2.5-VL and counting their prompt tokens."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from diptych import compat
from diptych.models.qwen_image.chat import count_tokens, render_chat
from diptych.models.qwen_image.tiny_vlm import write_tiny_vlm
from diptych.types import ChatMessage, ImagePart, TextPart

compat.install()

from transformers import AutoProcessor, AutoTokenizer  # noqa: E402  (after compat.install)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ckpt")
    write_tiny_vlm(root, seed=0)
    return root


@pytest.fixture(scope="module")
def processor(checkpoint: Path) -> Any:
    return AutoProcessor.from_pretrained(checkpoint / "processor")


RED = Image.new("RGB", (64, 64), (255, 0, 0))
WIDE = Image.new("RGB", (120, 60), (0, 0, 255))


def test_renders_placeholders_and_images_in_order(processor: Any) -> None:
    messages = (
        ChatMessage("system", (TextPart("Be brief."),)),
        ChatMessage("user", (TextPart("Compare "), ImagePart(RED), TextPart(" and "), ImagePart(WIDE))),
        ChatMessage("assistant", (TextPart("Red, blue."),)),
        ChatMessage("user", (TextPart("Sure?"),)),
    )
    prompt = render_chat(processor, messages)
    vision = "<|vision_start|><|image_pad|><|vision_end|>"
    assert prompt.text == (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        f"<|im_start|>user\nCompare {vision} and {vision}<|im_end|>\n"
        "<|im_start|>assistant\nRed, blue.<|im_end|>\n"
        "<|im_start|>user\nSure?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert prompt.images == (RED, WIDE)


def test_tokenizer_without_template_gets_qwen_template(checkpoint: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(checkpoint / "tokenizer")
    tokenizer.chat_template = None
    prompt = render_chat(tokenizer, (ChatMessage("user", (TextPart("Hi"),)),))
    assert prompt.text.startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n")
    assert prompt.text.endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")


def test_count_tokens_matches_processor(processor: Any) -> None:
    prompt = render_chat(processor, (ChatMessage("user", (ImagePart(RED), ImagePart(WIDE), TextPart("What?"))),))
    inputs = processor(text=[prompt.text], images=list(prompt.images), return_tensors="pt")
    assert count_tokens(processor, prompt) == inputs["input_ids"].shape[1]
    # A bare tokenizer cannot expand images: one token per placeholder.
    image_tokens = int((inputs["input_ids"] == processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")).sum())
    assert count_tokens(processor.tokenizer, prompt) == inputs["input_ids"].shape[1] - image_tokens + 2


def test_rejects_empty_chat(processor: Any) -> None:
    with pytest.raises(ValueError):
        render_chat(processor, ())
