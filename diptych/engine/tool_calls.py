"""Tool calls: a chat's tools in vLLM's terms, and each choice's text parsed into calls.

vLLM's OpenAI server does this in its serving layer; here vLLM's own pieces do it for the
orchestrator. vLLM's request model carries the tools; the family's tool parser (``ToolCalling``),
composed as vLLM's server composes it, sets the structured outputs the tool choice needs (a
structural tag that holds ``required`` and named calls to the tools' schemas) and turns
each choice's new text into content and tool-call deltas, with one parser per choice.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import AsyncIterator
from typing import Any

from diptych.compat.vllm_internals import chat_output_parser, vllm_chat_request
from diptych.models.base import ToolCalling
from diptych.models.chat import function_tool
from diptych.types import (
    ChatEvent,
    ChatFinished,
    FinishReason,
    SamplingOptions,
    StructuredOutput,
    TextDelta,
    ToolCallDelta,
    ToolUse,
)


class ToolCallParsing:
    """One request's tools: the sampling they need, and its event stream with the calls parsed out."""

    def __init__(self, use: ToolUse, calling: ToolCalling, sampling: SamplingOptions) -> None:
        self._use = use
        self._calling = calling
        fields: dict[str, Any] = {
            "model": "",
            "messages": [],
            "tools": [function_tool(tool) for tool in use.tools],
            "tool_choice": ({"type": "function", "function": {"name": use.function}}
                            if use.choice == "function" else use.choice),
            "parallel_tool_calls": use.parallel,
            "skip_special_tokens": sampling.skip_special_tokens,
        }
        if sampling.structured is not None:
            fields["structured_outputs"] = sampling.structured.vllm_fields()
        self._parsers: dict[int, Any] = {0: chat_output_parser(calling.parser, calling.tokenizer)}
        self._request = self._parsers[0].adjust_request(vllm_chat_request(fields))
        self.sampling = dataclasses.replace(
            sampling,
            structured=_structured(self._request.extract_structured_outputs()),
            # The parser reads the call markers, which some tokenizers mark special.
            skip_special_tokens=self._request.skip_special_tokens,
        )

    async def parse(self, events: AsyncIterator[ChatEvent]) -> AsyncIterator[ChatEvent]:
        """``events`` with each choice's text split into content and tool-call deltas.

        A choice that called a tool and stopped by itself finishes with "tool_calls" (a named
        tool_choice keeps "stop", as OpenAI's API does)."""
        called: set[int] = set()
        async for event in events:
            if isinstance(event, TextDelta):
                parser = self._parser(event.index)
                message = parser.parse_delta(event.text, list(getattr(event, "token_ids", ())), self._request,
                                             [], finished=event.finish_reason is not None)
                calls = tuple(_call_delta(call) for call in (message.tool_calls if message else ()))
                if calls:
                    called.add(event.index)
                yield dataclasses.replace(event, text=(message.content or "") if message else "", tool_calls=calls,
                                          finish_reason=self._finish(event.finish_reason, event.index in called))
            elif isinstance(event, ChatFinished):
                yield dataclasses.replace(event, finish_reasons=tuple(
                    self._finish(reason, index in called) for index, reason in enumerate(event.finish_reasons)))
            else:
                yield event

    def _parser(self, index: int) -> Any:
        if index not in self._parsers:
            self._parsers[index] = chat_output_parser(self._calling.parser, self._calling.tokenizer)
        return self._parsers[index]

    def _finish(self, reason: FinishReason | None, called: bool) -> FinishReason | None:
        if reason == "stop" and called and self._use.choice != "function":
            return "tool_calls"
        return reason


def _call_delta(call: Any) -> ToolCallDelta:
    function = call.function
    return ToolCallDelta(index=call.index, id=call.id, name=function.name if function else None,
                         arguments=(function.arguments or "") if function else "")


def _structured(params: Any) -> StructuredOutput | None:
    """vLLM's ``StructuredOutputsParams`` (what the parser set, or the request's own) as ours."""
    if params is None:
        return None
    options = StructuredOutput.options_of(params)
    for kind in ("structural_tag", "json", "regex", "choice", "grammar"):
        value = getattr(params, kind)
        if value is not None:
            spec = value if isinstance(value, str) else json.dumps(value)
            return StructuredOutput(kind, spec, **options)  # type: ignore[arg-type]
    return StructuredOutput("json_object", **options)
