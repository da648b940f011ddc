"""Tool parsing with vLLM's hermes parser over scripted model text (Qwen3-VL's tiny tokenizer, no engine).

A random model never writes a call by itself under tool_choice "auto"; here the text is what a
model that calls tools writes, cut into pieces as a stream delivers it.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from diptych.engine.tool_calls import ToolCallParsing
from diptych.models.base import ToolCalling
from diptych.types import ChatEvent, ChatFinished, SamplingOptions, StructuredOutput, TextDelta, Tool, ToolUse

WEATHER = Tool("get_weather", "The weather in a city.",
               json.dumps({"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}))
CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>'


@pytest.fixture(scope="module")
def calling() -> ToolCalling:
    from diptych.models.qwen_image_21.tiny import qwen3_vl_tokenizer

    return ToolCalling("hermes", qwen3_vl_tokenizer())


async def _scripted(texts: dict[int, str], piece: int = 4) -> AsyncIterator[ChatEvent]:
    """Each choice's text in pieces of ``piece`` characters, the choices interleaved, each ending with "stop"."""
    pieces = {i: [t[k:k + piece] for k in range(0, len(t), piece)] for i, t in texts.items()}
    for step in range(max(len(p) for p in pieces.values())):
        for index, mine in pieces.items():
            if step < len(mine):
                yield TextDelta(mine[step], 1, index=index, finish_reason="stop" if step == len(mine) - 1 else None)
    yield ChatFinished(("stop",) * len(texts), prompt_tokens=3, completion_tokens=9)


async def _parsed(parsing: ToolCallParsing, texts: dict[int, str]) -> list[Any]:
    return [event async for event in parsing.parse(_scripted(texts))]


def _calls(events: list[Any], index: int) -> list[tuple[str, dict]]:
    calls: dict[int, dict[str, str]] = {}
    for event in events:
        if isinstance(event, TextDelta) and event.index == index:
            for piece in event.tool_calls:
                call = calls.setdefault(piece.index, {"name": "", "arguments": ""})
                call["name"] += piece.name or ""
                call["arguments"] += piece.arguments
    return [(c["name"], json.loads(c["arguments"])) for _, c in sorted(calls.items())]


def _content(events: list[Any], index: int) -> str:
    return "".join(e.text for e in events if isinstance(e, TextDelta) and e.index == index)


async def test_auto_splits_content_from_calls_per_choice(calling: ToolCalling) -> None:
    parsing = ToolCallParsing(ToolUse((WEATHER,)), calling, SamplingOptions())
    events = await _parsed(parsing, {0: "Let me look. " + CALL, 1: "It is sunny."})
    assert _content(events, 0) == "Let me look. " and _calls(events, 0) == [("get_weather", {"city": "Oslo"})]
    assert _content(events, 1) == "It is sunny." and _calls(events, 1) == []
    ids = [p.id for e in events if isinstance(e, TextDelta) for p in e.tool_calls if p.id]
    assert len(ids) == 1 and ids[0].startswith("chatcmpl-tool-")
    assert events[-1].finish_reasons == ("tool_calls", "stop")
    assert [e.finish_reason for e in events if isinstance(e, TextDelta) and e.finish_reason] == ["stop", "tool_calls"]
    # Auto leaves decoding free, and keeps the special tokens the parser reads.
    assert parsing.sampling.structured is None and parsing.sampling.skip_special_tokens is False


async def test_none_passes_the_text_through(calling: ToolCalling) -> None:
    parsing = ToolCallParsing(ToolUse((WEATHER,), "none"), calling, SamplingOptions())
    events = await _parsed(parsing, {0: CALL})
    assert _content(events, 0) == CALL and _calls(events, 0) == []
    assert events[-1].finish_reasons == ("stop",)


@pytest.mark.parametrize(("choice", "function"), [("required", None), ("function", "get_weather")])
async def test_forced_choices_constrain_decoding_to_the_call_format(calling: ToolCalling, choice: Any,
                                                                    function: str | None) -> None:
    strict = Tool(WEATHER.name, WEATHER.description, WEATHER.parameters, strict=True)
    parsing = ToolCallParsing(ToolUse((strict,), choice, function), calling, SamplingOptions())
    structured = parsing.sampling.structured
    assert structured is not None and structured.kind == "structural_tag"
    tag = json.loads(structured.spec)
    assert "<tool_call>" in json.dumps(tag) and WEATHER.parameters is not None
    assert json.loads(WEATHER.parameters)["properties"] == _find(tag, "json_schema")["properties"]
    events = await _parsed(parsing, {0: CALL})
    assert _calls(events, 0) == [("get_weather", {"city": "Oslo"})]
    assert events[-1].finish_reasons == ("stop" if choice == "function" else "tool_calls",)


def test_a_response_format_is_kept_beside_auto_tools(calling: ToolCalling) -> None:
    json_object = SamplingOptions(structured=StructuredOutput("json_object"))
    parsing = ToolCallParsing(ToolUse((WEATHER,), "none"), calling, json_object)
    assert parsing.sampling.structured == StructuredOutput("json_object")


def _find(tree: Any, key: str) -> Any:
    """The first value of ``key`` anywhere in a JSON tree."""
    if isinstance(tree, dict):
        if key in tree:
            return tree[key]
        tree = list(tree.values())
    if isinstance(tree, list):
        for item in tree:
            if (found := _find(item, key)) is not None:
                return found
    return None
