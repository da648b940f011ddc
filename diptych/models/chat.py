"""Chats as every family renders them: our messages through a processor's chat template.

Families differ only in the template and in the placeholder it writes per image; the
conversion of messages and the check that each image got its placeholder are shared.
"""

from __future__ import annotations

import json
from typing import Any

from diptych.models.base import ChatPrompt
from diptych.types import ChatMessage, ImagePart, TextPart, Tool


def apply_chat_template(processor_or_tokenizer: Any, messages: tuple[ChatMessage, ...], image_placeholder: str,
                        chat_template: str | None = None, tools: tuple[Tool, ...] = ()) -> ChatPrompt:
    """The template applied to ``messages``, with the assistant header appended, and the images in order.

    ``chat_template`` overrides the processor's own (``None``: the processor's). ``tools`` and
    the messages' tool calls reach the template as transformers passes them: OpenAI's
    function objects, each call's arguments parsed into an object.
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
        entry: dict[str, Any] = {"role": message.role, "content": content}
        if message.tool_calls:
            entry["tool_calls"] = [
                {"id": call.id, "type": "function",
                 "function": {"name": call.name, "arguments": json.loads(call.arguments)}}
                for call in message.tool_calls
            ]
        if message.tool_call_id is not None:
            entry["tool_call_id"] = message.tool_call_id
        conversation.append(entry)
    text = processor_or_tokenizer.apply_chat_template(
        conversation, chat_template=chat_template, add_generation_prompt=True, tokenize=False,
        tools=[function_tool(tool) for tool in tools] or None,
    )
    placed = text.count(image_placeholder)
    if placed != len(images):
        raise ValueError(f"chat template placed {placed} image placeholders for {len(images)} images")
    return ChatPrompt(text=text, images=tuple(images))


def function_tool(tool: Tool) -> dict[str, Any]:
    """A tool as OpenAI's API and chat templates write it."""
    function: dict[str, Any] = {"name": tool.name}
    if tool.description is not None:
        function["description"] = tool.description
    if tool.parameters is not None:
        function["parameters"] = json.loads(tool.parameters)
    if tool.strict is not None:
        function["strict"] = tool.strict
    return {"type": "function", "function": function}
