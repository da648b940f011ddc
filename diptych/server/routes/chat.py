from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse

from diptych.engine.protocol import EngineClient
from diptych.server.disconnect import cancel_on_disconnect
from diptych.server.remote_images import RemoteImageFetcher
from diptych.server.routes.common import check_model
from diptych.server.schemas.chat import ChatCompletion, ChatCompletionRequest
from diptych.server.schemas.errors import error_responses
from diptych.server.services.chat import create_chat_completion
from diptych.server.shutdown import Drain
from diptych.settings import Settings


def chat_router(engine: EngineClient, settings: Settings, fetcher: RemoteImageFetcher, drain: Drain) -> APIRouter:
    router = APIRouter()

    @router.post(
        "/v1/chat/completions",
        response_model=None,
        responses={
            200: {"model": ChatCompletion, "description": "The completion; with `stream`, `chat.completion.chunk` "
                  "events and `[DONE]` as server-sent events.", "content": {"text/event-stream": {}}},
            **error_responses(400, 404, 413, 429, 503, 504),
        },
    )
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> JSONResponse | StreamingResponse:
        check_model(body.model, engine)
        return await cancel_on_disconnect(request, create_chat_completion(body, engine, settings, fetcher), drain)

    return router
