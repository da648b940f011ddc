"""Chat completions: a checked request, its images loaded → an engine request → its events.

The route parses the HTTP body and shapes the response (JSON or server-sent events).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from dataclasses import dataclass
from typing import Any

from PIL import Image

from diptych.engine.protocol import EngineClient
from diptych.server.errors import APIError
from diptych.server.media import check_image_count, decode_image, decode_image_url, is_remote_url
from diptych.server.remote_images import RemoteImageFetcher
from diptych.server.schemas.chat import ChatCompletionRequest, NamedToolChoice, TextContent, ToolCall
from diptych.server.services.streams import EngineStream, open_stream
from diptych.settings import Settings
from diptych.types import (
    ChatEvent,
    ChatMessage,
    ChatRequest,
    ImagePart,
    SamplingOptions,
    StructuredOutput,
    TextPart,
    Tool,
    ToolUse,
)
from diptych.types import ToolCall as EngineToolCall


ImageKey = tuple[int, int]  # (message index, content-part index)


def _image_urls(body: ChatCompletionRequest, settings: Settings) -> dict[ImageKey, str]:
    """The image URLs of a request, checked for where they may appear and how many there are.

    Runs before any image is fetched or decoded, so a refused request costs neither.
    """
    urls: dict[ImageKey, str] = {}
    for i, message in enumerate(body.messages):
        if not isinstance(message.content, list):
            continue
        for j, part in enumerate(message.content):
            if isinstance(part, TextContent):
                continue
            if message.role != "user":
                raise APIError(400, f"messages[{i}]: only user messages may carry images",
                               param=f"messages.{i}.content.{j}")
            urls[(i, j)] = part.image_url.url
    check_image_count(len(urls), settings.max_images_per_request, "messages")
    return urls


async def _load_images(
    urls: dict[ImageKey, str], settings: Settings, fetcher: RemoteImageFetcher
) -> dict[ImageKey, Image.Image]:
    # One image at a time: peak memory stays at one decode, whatever the request holds.
    images: dict[ImageKey, Image.Image] = {}
    for (i, j), url in urls.items():
        param = f"messages.{i}.content.{j}.image_url"
        if is_remote_url(url):
            data = await fetcher.fetch(url, param=param)
            images[(i, j)] = await asyncio.to_thread(
                decode_image, data, param=param, max_pixels=settings.max_input_pixels)
        else:
            images[(i, j)] = await asyncio.to_thread(
                decode_image_url, url, param=param, max_pixels=settings.max_input_pixels)
    return images


def _to_engine_messages(body: ChatCompletionRequest, images: dict[ImageKey, Image.Image]) -> tuple[ChatMessage, ...]:
    messages: list[ChatMessage] = []
    for i, message in enumerate(body.messages):
        role = "system" if message.role == "developer" else message.role
        parts: list[TextPart | ImagePart] = []
        if isinstance(message.content, str):
            parts.append(TextPart(message.content))
        elif message.content is not None:
            for j, part in enumerate(message.content):
                parts.append(TextPart(part.text) if isinstance(part, TextContent) else ImagePart(images[(i, j)]))
        if message.tool_calls and message.role != "assistant":
            raise APIError(400, f"messages[{i}]: only assistant messages carry tool_calls",
                           param=f"messages.{i}.tool_calls")
        if message.role == "tool" and message.tool_call_id is None:
            raise APIError(400, f"messages[{i}]: a tool message needs the tool_call_id it answers",
                           param=f"messages.{i}.tool_call_id")
        calls = tuple(_tool_call(call, f"messages.{i}.tool_calls.{j}") for j, call in enumerate(message.tool_calls or ()))
        messages.append(ChatMessage(role=role, content=tuple(parts), tool_calls=calls,  # type: ignore[arg-type]
                                    tool_call_id=message.tool_call_id if message.role == "tool" else None))
    return tuple(messages)


def _tool_call(call: ToolCall, param: str) -> EngineToolCall:
    try:
        arguments = json.loads(call.function.arguments)
    except ValueError:
        arguments = None
    if not isinstance(arguments, dict):
        raise APIError(400, f"{param}: function.arguments must be a JSON object, as text",
                       param=f"{param}.function.arguments")
    return EngineToolCall(id=call.id, name=call.function.name, arguments=call.function.arguments)


def _tool_use(body: ChatCompletionRequest) -> ToolUse | None:
    """``tools``, ``tool_choice`` and ``parallel_tool_calls`` as the engine takes them (None: no tools)."""
    choice = body.tool_choice
    if not body.tools:
        if choice is not None and choice != "none":
            raise APIError(400, "tool_choice: needs tools", param="tool_choice")
        return None
    tools = tuple(Tool(name=t.function.name, description=t.function.description,
                       parameters=None if t.function.parameters is None else json.dumps(t.function.parameters),
                       strict=t.function.strict)
                  for t in body.tools)
    parallel = body.parallel_tool_calls is not False
    if isinstance(choice, NamedToolChoice):
        if choice.function.name not in {tool.name for tool in tools}:
            raise APIError(400, f"tool_choice: no tool is named {choice.function.name!r}",
                           param="tool_choice.function.name")
        return ToolUse(tools, "function", choice.function.name, parallel)
    return ToolUse(tools, choice or "auto", None, parallel)


def _sampling(body: ChatCompletionRequest, settings: Settings) -> SamplingOptions:
    max_tokens = body.max_completion_tokens or body.max_tokens or min(256, settings.max_output_tokens)
    stop = (body.stop,) if isinstance(body.stop, str) else tuple(body.stop or ())
    if len(stop) > 4:
        raise APIError(400, "stop: at most 4 stop sequences", param="stop")
    if body.top_logprobs is not None and not body.logprobs:
        raise APIError(400, "top_logprobs: needs logprobs: true", param="top_logprobs")
    if body.min_tokens > max_tokens:
        raise APIError(400, f"min_tokens: {body.min_tokens} is more than max_tokens ({max_tokens})", param="min_tokens")
    return SamplingOptions(
        max_tokens=max_tokens,
        temperature=1.0 if body.temperature is None else body.temperature,
        top_p=1.0 if body.top_p is None else body.top_p,
        top_k=max(0, body.top_k or 0),
        seed=body.seed,
        stop=stop,
        ignore_eos=body.ignore_eos,
        min_tokens=body.min_tokens,
        min_p=body.min_p or 0.0,
        repetition_penalty=1.0 if body.repetition_penalty is None else body.repetition_penalty,
        presence_penalty=body.presence_penalty or 0.0,
        frequency_penalty=body.frequency_penalty or 0.0,
        stop_token_ids=tuple(body.stop_token_ids or ()),
        logit_bias=tuple((int(token), bias) for token, bias in (body.logit_bias or {}).items()),
        skip_special_tokens=body.skip_special_tokens,
        include_stop_str_in_output=body.include_stop_str_in_output,
        logprobs=(body.top_logprobs or 0) if body.logprobs else None,
        n=body.n,
        structured=_structured(body),
        allowed_token_ids=tuple(body.allowed_token_ids or ()),
        bad_words=tuple(body.bad_words or ()),
        spaces_between_special_tokens=body.spaces_between_special_tokens,
    )


def _structured(body: ChatCompletionRequest) -> StructuredOutput | None:
    """``structured_outputs`` (vLLM's form) and ``response_format`` as one constraint.

    As in vLLM, a JSON ``response_format`` replaces the constraint of ``structured_outputs`` and
    keeps its options; ``text`` adds none.
    """
    options: dict[str, Any] = {}
    constraint: tuple[str, str] | None = None
    if (given := body.structured_outputs) is not None:
        options = StructuredOutput.options_of(given)
        constraints = {"json": given.json_, "regex": given.regex, "choice": given.choice, "grammar": given.grammar,
                       "json_object": given.json_object or None, "structural_tag": given.structural_tag}
        named = [kind for kind, value in constraints.items() if value is not None]
        if len(named) != 1:
            raise APIError(400, f"structured_outputs: give exactly one of {', '.join(constraints)} "
                           f"(got {len(named) or 'none'})", param="structured_outputs")
        (kind,) = named
        value = constraints[kind]
        constraint = (kind, "" if kind == "json_object" else value if isinstance(value, str) else json.dumps(value))
    response_format = body.response_format
    if response_format is not None and response_format.type == "json_object":
        constraint = ("json_object", "")
    elif response_format is not None and response_format.type == "json_schema":
        if response_format.json_schema is None:
            raise APIError(400, "response_format: type json_schema needs a json_schema",
                           param="response_format.json_schema")
        constraint = ("json", json.dumps(response_format.json_schema.json_schema))
    if constraint is None:
        return None
    return StructuredOutput(*constraint, **options)  # type: ignore[arg-type]


@dataclass
class ChatRun:
    request_id: str
    created: int
    stream: EngineStream[ChatEvent]


async def complete(
    body: ChatCompletionRequest, engine: EngineClient, settings: Settings, fetcher: RemoteImageFetcher
) -> ChatRun:
    if body.messages[-1].role == "assistant":
        raise APIError(400, "the last message must not be from the assistant", param="messages")
    sampling = _sampling(body, settings)
    tools = _tool_use(body)
    urls = _image_urls(body, settings)
    messages = _to_engine_messages(body, await _load_images(urls, settings, fetcher))
    request = ChatRequest(request_id=f"chatcmpl-{uuid.uuid4().hex}", messages=messages, sampling=sampling,
                          tools=tools)
    return ChatRun(request.request_id, int(time.time()), await open_stream(engine.chat(request)))
