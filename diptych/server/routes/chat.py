from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, StreamingResponse

from diptych.engine.protocol import EngineClient
from diptych.server.disconnect import cancel_on_disconnect
from diptych.server.routes.common import check_model
from diptych.server.schemas.chat import ChatCompletionRequest
from diptych.server.services.chat import create_chat_completion
from diptych.settings import Settings


def chat_router(engine: EngineClient, settings: Settings, auth: object) -> APIRouter:
    router = APIRouter(dependencies=[Depends(auth)])

    @router.post("/v1/chat/completions", response_model=None)
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> JSONResponse | StreamingResponse:
        check_model(body.model, engine)
        return await cancel_on_disconnect(request, create_chat_completion(body, engine, settings))

    return router
