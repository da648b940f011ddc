"""Chats as every family renders them: our messages through a processor's chat template.

Families differ only in the template and in the placeholder it writes per image; the
conversion of messages and the check that each image got its placeholder are shared.
"""

from __future__ import annotations

from typing import Any

from diptych.models.base import ChatPrompt
from diptych.types import ChatMessage, ImagePart, TextPart


def apply_chat_template(processor_or_tokenizer: Any, messages: tuple[ChatMessage, ...], image_placeholder: str,
                        chat_template: str | None = None) -> ChatPrompt:
    """The template applied to ``messages``, with the assistant header appended, and the images in order.

    ``chat_template`` overrides the processor's own (``None``: the processor's).
    """
    if not messages:
        raise ValueError("a chat needs at least one message")
    conversation: list[dict[str, Any]] = []
    images: list[Any] = []
    for message in messages:
        content: list[dict[str, str]] = []
        for part in message.content:
            if isinstance(part, TextPart):
                content.append({"type": "text", "text": part.text})
            elif isinstance(part, ImagePart):
                content.append({"type": "image"})
                images.append(part.image)
            else:
                raise TypeError(f"unknown content part {type(part).__name__}")
        conversation.append({"role": message.role, "content": content})
    text = processor_or_tokenizer.apply_chat_template(
        conversation, chat_template=chat_template, add_generation_prompt=True, tokenize=False
    )
    placed = text.count(image_placeholder)
    if placed != len(images):
        raise ValueError(f"chat template placed {placed} image placeholders for {len(images)} images")
    return ChatPrompt(text=text, images=tuple(images))
