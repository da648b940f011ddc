"""Render a chat for Qwen2.5-VL as vLLM expects it, and count its prompt tokens.

vLLM's Qwen2.5-VL takes the prompt text with one ``<|vision_start|><|image_pad|><|vision_end|>``
per image and the PIL images in the same order; its multimodal processor expands each
``<|image_pad|>`` into as many tokens as the image's merged patch grid.
"""

from __future__ import annotations

from typing import Any

from diptych.models.base import ChatPrompt
from diptych.models.chat import apply_chat_template
from diptych.models.qwen_image.chat_template import CHAT_TEMPLATE
from diptych.types import ChatMessage, Tool

_IMAGE_PAD = "<|image_pad|>"


def render_chat(processor_or_tokenizer: Any, messages: tuple[ChatMessage, ...],
                fallback_template: str = CHAT_TEMPLATE, tools: tuple[Tool, ...] = ()) -> ChatPrompt:
    """The chat template applied to ``messages``, with the assistant header appended.

    A processor or tokenizer without a template of its own (Qwen-Image text-to-image) gets
    ``fallback_template``: Qwen2.5-VL's unless the caller names its model's.
    """
    template = None if getattr(processor_or_tokenizer, "chat_template", None) else fallback_template
    return apply_chat_template(processor_or_tokenizer, messages, _IMAGE_PAD, template, tools)


def count_tokens(processor_or_tokenizer: Any, prompt: ChatPrompt | str) -> int:
    """Prompt tokens as the model sees them: text tokens, each image placeholder expanded.

    Images are counted only when given a processor (it knows the patch grid); with a bare
    tokenizer each image counts as its one placeholder token.
    """
    text, images = (prompt, ()) if isinstance(prompt, str) else (prompt.text, prompt.images)
    tokenizer = getattr(processor_or_tokenizer, "tokenizer", processor_or_tokenizer)
    count = len(tokenizer(text, add_special_tokens=False)["input_ids"])
    image_processor = getattr(processor_or_tokenizer, "image_processor", None)
    if image_processor is not None:
        merge = image_processor.merge_size**2
        for image in images:
            patches = image_processor.get_number_of_image_patches(image.height, image.width, {})
            count += patches // merge - 1  # the placeholder itself is already counted
    return count
