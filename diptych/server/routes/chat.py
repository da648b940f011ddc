"""``/v1/chat/completions``: parse, call the service, shape the response."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sse_starlette import EventSourceResponse, ServerSentEvent

from diptych.engine.protocol import EngineClient
from diptych.server.disconnect import cancel_on_disconnect
from diptych.server.remote_images import RemoteImageFetcher
from diptych.server.routes.common import check_model
from diptych.server.schemas.chat import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    Choice,
    ChoiceLogprobs,
    ChunkChoice,
    Delta,
    DeltaFunctionCall,
    DeltaToolCall,
    FunctionCall,
    ResponseMessage,
    StreamOptions,
    TokenLogprobOut,
    ToolCall,
    TopLogprob,
    Usage,
)
from diptych.server.schemas.errors import error_responses
from diptych.server.services import chat
from diptych.server.shutdown import Drain
from diptych.server.sse import sse_event, sse_response
from diptych.settings import Settings
from diptych.types import ChatFinished, TextDelta


def chat_router(engine: EngineClient, settings: Settings, fetcher: RemoteImageFetcher, drain: Drain) -> APIRouter:
    router = APIRouter()

    async def respond(body: ChatCompletionRequest) -> JSONResponse | EventSourceResponse:
        run = await chat.complete(body, engine, settings, fetcher)
        if body.stream:
            options = body.stream_options or StreamOptions()
            return sse_response(_chunks(run, body.model, options, bool(body.logprobs), body.n),
                                keepalive_s=settings.sse_keepalive_s,
                                on_close=run.stream.aclose)
        return await _completion(run, body.model, bool(body.logprobs))

    @router.post(
        "/v1/chat/completions",
        response_model=None,
        responses={
            200: {"model": ChatCompletion, "description": "The completion; with `stream`, `chat.completion.chunk` "
                  "events and `[DONE]` as server-sent events.", "content": {"text/event-stream": {}}},
            **error_responses(400, 404, 413, 429, 503, 504),
        },
    )
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> JSONResponse | EventSourceResponse:
        check_model(body.model, engine)
        return await cancel_on_disconnect(request, respond(body), drain)

    return router


def _usage(prompt_tokens: int, completion_tokens: int) -> Usage:
    return Usage(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                 total_tokens=prompt_tokens + completion_tokens)


def _logprobs(deltas: list[TextDelta], wanted: bool) -> ChoiceLogprobs | None:
    """OpenAI's ``logprobs.content``: each token with its bytes and its most likely alternatives."""
    if not wanted:
        return None
    return ChoiceLogprobs(content=[
        TokenLogprobOut(token=lp.token, logprob=lp.logprob, bytes=list(lp.token.encode()),
                        top_logprobs=[TopLogprob(token=t, logprob=v, bytes=list(t.encode())) for t, v in lp.top])
        for delta in deltas for lp in delta.logprobs
    ])


def _tool_calls(deltas: list[TextDelta]) -> list[ToolCall]:
    """A choice's tool-call deltas joined into whole calls, in order."""
    calls: dict[int, dict[str, str]] = {}
    for delta in deltas:
        for piece in delta.tool_calls:
            call = calls.setdefault(piece.index, {"id": "", "name": "", "arguments": ""})
            call["id"] = call["id"] or (piece.id or "")
            call["name"] += piece.name or ""
            call["arguments"] += piece.arguments
    return [ToolCall(id=call["id"], function=FunctionCall(name=call["name"], arguments=call["arguments"]))
            for _, call in sorted(calls.items())]


def _delta_tool_calls(delta: TextDelta) -> list[DeltaToolCall] | None:
    if not delta.tool_calls:
        return None
    return [DeltaToolCall(index=piece.index, id=piece.id, type="function" if piece.id else None,
                          function=DeltaFunctionCall(name=piece.name, arguments=piece.arguments if piece.arguments
                                                     else None))
            for piece in delta.tool_calls]


async def _completion(run: chat.ChatRun, model: str, logprobs: bool) -> JSONResponse:
    deltas, finished = await run.stream.until(ChatFinished)
    texts = [event for event in deltas if isinstance(event, TextDelta)]
    choices = []
    for index, finish_reason in enumerate(finished.finish_reasons):
        mine = [event for event in texts if event.index == index]
        content = "".join(event.text for event in mine)
        calls = _tool_calls(mine)
        message = ResponseMessage(content=content or (None if calls else ""), tool_calls=calls or None)
        choices.append(Choice(index=index, message=message, logprobs=_logprobs(mine, logprobs),
                              finish_reason=finish_reason))
    completion = ChatCompletion(
        id=run.request_id,
        created=run.created,
        model=model,
        choices=choices,
        usage=_usage(finished.prompt_tokens, finished.completion_tokens),
    )
    payload = completion.model_dump()
    for choice in payload["choices"]:
        if choice["message"]["tool_calls"] is None:
            del choice["message"]["tool_calls"]
    return JSONResponse(payload)


async def _chunks(
    run: chat.ChatRun, model: str, options: StreamOptions, logprobs: bool, n: int
) -> AsyncIterator[ServerSentEvent]:
    """``chat.completion.chunk`` events: each choice's role, its pieces of text and its finish; usage if
    asked; ``[DONE]``.

    Choices interleave as they are decoded, each chunk naming its ``index``; a choice's finish
    is sent as soon as that choice ends. With ``continuous_usage_stats`` (vLLM's option, with
    ``include_usage``) every text chunk carries the usage so far, as vLLM's server sends it."""
    continuous = options.include_usage and options.continuous_usage_stats
    completion_tokens = 0
    unfinished = set(range(n))

    def chunk(index: int | None, delta: Delta, finish: str | None = None, usage: Usage | None = None,
              token_logprobs: ChoiceLogprobs | None = None) -> ServerSentEvent:
        body = ChatCompletionChunk(
            id=run.request_id,
            created=run.created,
            model=model,
            choices=[ChunkChoice(index=index, delta=delta, logprobs=token_logprobs,  # type: ignore[arg-type]
                                 finish_reason=finish)] if index is not None else [],
            usage=usage,
        )
        payload = body.model_dump()
        if usage is None:
            del payload["usage"]
        for c in payload["choices"]:
            c["delta"] = _without_nulls(c["delta"])
        return sse_event(payload)

    for index in range(n):
        yield chunk(index, Delta(role="assistant", content=""))
    async for event in run.stream.events():
        if isinstance(event, TextDelta):
            completion_tokens += event.num_tokens
            so_far = _usage(event.prompt_tokens, completion_tokens) if continuous else None
            # A token with no text yet (a special token, part of a UTF-8 sequence) still has its logprob.
            if event.text or event.tool_calls or (logprobs and event.logprobs):
                yield chunk(event.index, Delta(content=event.text or None if event.tool_calls else event.text,
                                               tool_calls=_delta_tool_calls(event)),
                            usage=so_far, token_logprobs=_logprobs([event], logprobs))
            if event.finish_reason is not None and event.index in unfinished:
                unfinished.discard(event.index)
                yield chunk(event.index, Delta(), finish=event.finish_reason, usage=so_far)
        elif isinstance(event, ChatFinished):
            usage = _usage(event.prompt_tokens, event.completion_tokens)
            for index in sorted(unfinished):  # from engines that report the finishes only here
                yield chunk(index, Delta(), finish=event.finish_reasons[index], usage=usage if continuous else None)
            if options.include_usage:
                yield chunk(None, Delta(), usage=usage)
            break
    yield sse_event("[DONE]")


def _without_nulls(value: Any) -> Any:
    """A delta as OpenAI streams it: fields with nothing new are left out."""
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_nulls(v) for v in value]
    return value
