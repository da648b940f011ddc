"""``/v1/images/generations`` and ``/v1/images/edits``: parse, call the service, shape the response."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sse_starlette import EventSourceResponse, ServerSentEvent

from diptych.engine.protocol import EngineClient
from diptych.server.disconnect import cancel_on_disconnect
from diptych.server.media import encode_image
from diptych.server.multipart import read_edit_upload
from diptych.server.routes.common import check_model
from diptych.server.schemas.errors import error_responses
from diptych.server.schemas.images import (
    ImageData,
    ImageEditOptions,
    ImageGenerationRequest,
    ImageOptions,
    ImagesResponse,
    ImageUsage,
)
from diptych.server.services import images
from diptych.server.shutdown import Drain
from diptych.server.sse import sse_event, sse_response
from diptych.settings import Settings
from diptych.types import ImageEvent, ImagesFinished, PartialImage

_IMAGE_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"model": ImagesResponse, "description": "The images as base64; with `stream`, partial and completed "
          "image events as server-sent events.", "content": {"text/event-stream": {}}},
    **error_responses(400, 404, 413, 429, 503, 504),
}


def images_router(engine: EngineClient, settings: Settings, drain: Drain) -> APIRouter:
    router = APIRouter()

    async def respond(run: Awaitable[images.ImageRun], options: ImageOptions,
                      prefix: str) -> JSONResponse | EventSourceResponse:
        done = await run
        if options.stream:
            return sse_response(_events(done, options, prefix), keepalive_s=settings.sse_keepalive_s,
                                on_close=done.stream.aclose)
        return await _json(done, options)

    @router.post("/v1/images/generations", response_model=None, responses=_IMAGE_RESPONSES)
    async def generations(body: ImageGenerationRequest, request: Request) -> JSONResponse | EventSourceResponse:
        check_model(body.model, engine)
        return await cancel_on_disconnect(
            request, respond(images.generate(body, engine), body, "image_generation"), drain
        )

    @router.post(
        "/v1/images/edits",
        response_model=None,
        responses={**_IMAGE_RESPONSES, **error_responses(400, 404, 413, 415, 429, 503, 504)},
        openapi_extra={"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": _edit_form_schema()}}}},
    )
    async def edits(request: Request) -> JSONResponse | EventSourceResponse:
        upload = await read_edit_upload(request, settings)
        check_model(upload.options.model, engine)
        return await cancel_on_disconnect(
            request, respond(images.edit(upload, engine, settings), upload.options, "image_edit"), drain
        )

    return router


def _edit_form_schema() -> dict[str, Any]:
    schema = ImageEditOptions.model_json_schema()
    schema["properties"]["image"] = {"type": "string", "format": "binary"}
    schema["properties"]["mask"] = {"type": "string", "format": "binary"}
    schema["required"] = sorted({*schema.get("required", []), "image"})
    return schema


def _size(run: images.ImageRun) -> str:
    return f"{run.request.width}x{run.request.height}"


def _usage(finished: ImagesFinished) -> ImageUsage:
    return ImageUsage(
        input_tokens=finished.prompt_tokens,
        output_tokens=0,
        total_tokens=finished.prompt_tokens,
        input_tokens_details={"text_tokens": finished.prompt_tokens, "image_tokens": 0},
    )


async def _json(run: images.ImageRun, options: ImageOptions) -> JSONResponse:
    _, finished = await run.stream.until(ImagesFinished)
    encoded = await asyncio.to_thread(
        lambda: [encode_image(img, options.output_format, options.output_compression) for img in finished.images]
    )
    response = ImagesResponse(
        created=int(time.time()),
        data=[ImageData(b64_json=b64) for b64 in encoded],
        output_format=options.output_format,
        size=_size(run),
        usage=_usage(finished),
    )
    return JSONResponse(response.model_dump(exclude_none=True))


async def _events(run: images.ImageRun, options: ImageOptions, prefix: str) -> AsyncIterator[ServerSentEvent]:
    """OpenAI's image stream events: ``{prefix}.partial_image`` per preview, ``{prefix}.completed`` per image."""
    fmt, compression = options.output_format, options.output_compression
    common = {"size": _size(run), "quality": "auto", "background": "opaque", "output_format": fmt}
    event: ImageEvent
    async for event in run.stream.events():
        if isinstance(event, PartialImage):
            b64 = await asyncio.to_thread(encode_image, event.image, fmt, compression)
            yield sse_event({"type": f"{prefix}.partial_image", "b64_json": b64, "created_at": int(time.time()),
                             "partial_image_index": event.partial_index, "image_index": event.index,
                             "progress": {"step": event.step, "total": event.total}, **common},
                            event=f"{prefix}.partial_image")
        elif isinstance(event, ImagesFinished):
            usage = _usage(event).model_dump()
            for index, image in enumerate(event.images):
                b64 = await asyncio.to_thread(encode_image, image, fmt, compression)
                yield sse_event({"type": f"{prefix}.completed", "b64_json": b64, "created_at": int(time.time()),
                                 "image_index": index, "usage": usage, **common},
                                event=f"{prefix}.completed")
            return
