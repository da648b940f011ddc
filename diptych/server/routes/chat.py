"""``/v1/chat/completions``: parse, call the service, shape the response."""

from __future__ import annotations

from collections.abc import AsyncIterator

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
    ResponseMessage,
    StreamOptions,
    TokenLogprobOut,
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


async def _completion(run: chat.ChatRun, model: str, logprobs: bool) -> JSONResponse:
    deltas, finished = await run.stream.until(ChatFinished)
    texts = [event for event in deltas if isinstance(event, TextDelta)]
    choices = []
    for index, finish_reason in enumerate(finished.finish_reasons):
        mine = [event for event in texts if event.index == index]
        choices.append(Choice(index=index, message=ResponseMessage(content="".join(event.text for event in mine)),
                              logprobs=_logprobs(mine, logprobs), finish_reason=finish_reason))
    completion = ChatCompletion(
        id=run.request_id,
        created=run.created,
        model=model,
        choices=choices,
        usage=_usage(finished.prompt_tokens, finished.completion_tokens),
    )
    return JSONResponse(completion.model_dump())


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
            c["delta"] = {k: v for k, v in c["delta"].items() if v is not None}
        return sse_event(payload)

    for index in range(n):
        yield chunk(index, Delta(role="assistant", content=""))
    async for event in run.stream.events():
        if isinstance(event, TextDelta):
            completion_tokens += event.num_tokens
            so_far = _usage(event.prompt_tokens, completion_tokens) if continuous else None
            # A token with no text yet (a special token, part of a UTF-8 sequence) still has its logprob.
            if event.text or (logprobs and event.logprobs):
                yield chunk(event.index, Delta(content=event.text), usage=so_far,
                            token_logprobs=_logprobs([event], logprobs))
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
