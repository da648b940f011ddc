"""Chat completions: HTTP schema → engine request, engine events → OpenAI responses."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

from fastapi.responses import JSONResponse, StreamingResponse
from PIL import Image

from diptych.engine.protocol import EngineClient
from diptych.server.errors import APIError
from diptych.server.media import decode_image, decode_image_url, is_remote_url
from diptych.server.remote_images import RemoteImageFetcher
from diptych.server.schemas.chat import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    Choice,
    ChunkChoice,
    Delta,
    ResponseMessage,
    TextContent,
    Usage,
)
from diptych.server.sse import sse_data, sse_response
from diptych.settings import Settings
from diptych.types import (
    ChatFinished,
    ChatMessage,
    ChatRequest,
    ImagePart,
    SamplingOptions,
    TextDelta,
    TextPart,
)


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
    if len(urls) > settings.max_images_per_request:
        raise APIError(400, f"{len(urls)} images in one request exceed the limit of "
                       f"{settings.max_images_per_request}", param="messages")
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
        messages.append(ChatMessage(role=role, content=tuple(parts)))  # type: ignore[arg-type]
    return tuple(messages)


def _sampling(body: ChatCompletionRequest, settings: Settings) -> SamplingOptions:
    max_tokens = body.max_completion_tokens or body.max_tokens or min(256, settings.max_output_tokens)
    stop = (body.stop,) if isinstance(body.stop, str) else tuple(body.stop or ())
    if len(stop) > 4:
        raise APIError(400, "stop: at most 4 stop sequences", param="stop")
    return SamplingOptions(
        max_tokens=max_tokens,
        temperature=1.0 if body.temperature is None else body.temperature,
        top_p=1.0 if body.top_p is None else body.top_p,
        top_k=max(0, body.top_k or 0),
        seed=body.seed,
        stop=stop,
    )


async def create_chat_completion(
    body: ChatCompletionRequest, engine: EngineClient, settings: Settings, fetcher: RemoteImageFetcher
) -> JSONResponse | StreamingResponse:
    request_id = f"chatcmpl-{uuid.uuid4().hex}"
    if body.messages[-1].role == "assistant":
        raise APIError(400, "the last message must not be from the assistant", param="messages")
    sampling = _sampling(body, settings)
    urls = _image_urls(body, settings)
    messages = _to_engine_messages(body, await _load_images(urls, settings, fetcher))
    request = ChatRequest(request_id=request_id, messages=messages, sampling=sampling)
    created = int(time.time())
    events = engine.chat(request)
    # Pull the first event before answering, so refusals (429, 400, 504) keep their status.
    try:
        first = await anext(events)
    except BaseException:
        await events.aclose()  # type: ignore[attr-defined]
        raise
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return sse_response(_stream_chunks(first, events, request_id, created, body.model, include_usage))
    try:
        text, finished = await _collect(first, events)
    finally:
        await events.aclose()  # type: ignore[attr-defined]
    completion = ChatCompletion(
        id=request_id,
        created=created,
        model=body.model,
        choices=[Choice(index=0, message=ResponseMessage(content=text), finish_reason=finished.finish_reason)],
        usage=_usage(finished),
    )
    return JSONResponse(completion.model_dump())


def _usage(finished: ChatFinished) -> Usage:
    return Usage(
        prompt_tokens=finished.prompt_tokens,
        completion_tokens=finished.completion_tokens,
        total_tokens=finished.prompt_tokens + finished.completion_tokens,
    )


async def _collect(first: object, events: AsyncIterator[object]) -> tuple[str, ChatFinished]:
    pieces: list[str] = []
    event = first
    while True:
        if isinstance(event, TextDelta):
            pieces.append(event.text)
        elif isinstance(event, ChatFinished):
            return "".join(pieces), event
        event = await anext(events)


async def _stream_chunks(
    first: object, events: AsyncIterator[object], request_id: str, created: int, model: str, include_usage: bool
) -> AsyncIterator[str]:
    def chunk(delta: Delta, finish: str | None = None, usage: Usage | None = None, choices: bool = True) -> str:
        body = ChatCompletionChunk(
            id=request_id,
            created=created,
            model=model,
            choices=[ChunkChoice(index=0, delta=delta, finish_reason=finish)] if choices else [],  # type: ignore[arg-type]
            usage=usage,
        )
        payload = body.model_dump()
        if usage is None:
            del payload["usage"]
        for c in payload["choices"]:
            c["delta"] = {k: v for k, v in c["delta"].items() if v is not None}
        return sse_data(payload)

    yield chunk(Delta(role="assistant", content=""))
    event = first
    while True:
        if isinstance(event, TextDelta) and event.text:
            yield chunk(Delta(content=event.text))
        elif isinstance(event, ChatFinished):
            yield chunk(Delta(), finish=event.finish_reason)
            if include_usage:
                yield chunk(Delta(), usage=_usage(event), choices=False)
            break
        event = await anext(events)
    yield sse_data("[DONE]")
