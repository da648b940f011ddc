"""Qwen3-VL's template as the tiny checkpoint ships it: tools, calls and results in Qwen3's format."""

from __future__ import annotations

import json

from diptych.models.chat import apply_chat_template
from diptych.models.qwen_image.chat_template import IMAGE_PLACEHOLDER
from diptych.models.qwen_image_21.tiny import qwen3_vl_tokenizer
from diptych.types import ChatMessage, TextPart, Tool, ToolCall

WEATHER = Tool("get_weather", "The weather in a city.", json.dumps({"type": "object"}))


def _render(messages: tuple[ChatMessage, ...], tools: tuple[Tool, ...] = ()) -> str:
    return apply_chat_template(qwen3_vl_tokenizer(), messages, IMAGE_PLACEHOLDER, tools=tools).text


def test_tools_calls_and_results_render_in_the_hermes_format() -> None:
    call = ToolCall("c1", "get_weather", '{"city": "Oslo"}')
    text = _render((
        ChatMessage("system", (TextPart("Be brief."),)),
        ChatMessage("user", (TextPart("Weather in Oslo?"),)),
        ChatMessage("assistant", (), tool_calls=(call,)),
        ChatMessage("tool", (TextPart("Snow."),), tool_call_id="c1"),
        ChatMessage("tool", (TextPart("-3 C."),), tool_call_id="c1"),
    ), (WEATHER,))
    system, rest = text.split("<|im_end|>\n", 1)
    assert system.startswith("<|im_start|>system\nBe brief.\n\n") and "<tools>\n" in system
    signatures = system[system.index("<tools>\n") + 8:system.index("\n</tools>")]
    assert json.loads(signatures) == {"type": "function", "function": {
        "name": "get_weather", "description": "The weather in a city.", "parameters": {"type": "object"}}}
    assert rest == (
        "<|im_start|>user\nWeather in Oslo?<|im_end|>\n"
        '<|im_start|>assistant\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>'
        "<|im_end|>\n"
        "<|im_start|>user\n<tool_response>\nSnow.\n</tool_response>\n<tool_response>\n-3 C.\n</tool_response>"
        "<|im_end|>\n<|im_start|>assistant\n"
    )


def test_without_tools_the_rendering_is_qwen3s_plain_one() -> None:
    messages = (ChatMessage("system", (TextPart("Be brief."),)), ChatMessage("user", (TextPart("Hi"),)))
    assert _render(messages) == ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
                                 "<|im_start|>assistant\n")
