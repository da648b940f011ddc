from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import ValidationError
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from diptych.engine.protocol import EngineClient
from diptych.server.errors import APIError
from diptych.server.disconnect import cancel_on_disconnect
from diptych.server.media import decode_image
from diptych.server.routes.common import check_model
from diptych.server.schemas.errors import error_responses
from diptych.server.schemas.images import ImageEditOptions, ImageGenerationRequest, ImagesResponse
from diptych.server.services.images import create_images, engine_request
from diptych.server.shutdown import Drain
from diptych.settings import Settings

_FILE_FIELDS = ("image", "image[]", "mask")
_IMAGE_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"model": ImagesResponse, "description": "The images as base64; with `stream`, partial and completed "
          "image events as server-sent events.", "content": {"text/event-stream": {}}},
    **error_responses(400, 404, 413, 429, 503, 504),
}


def images_router(engine: EngineClient, settings: Settings, drain: Drain) -> APIRouter:
    router = APIRouter()

    @router.post("/v1/images/generations", response_model=None, responses=_IMAGE_RESPONSES)
    async def generations(body: ImageGenerationRequest, request: Request) -> JSONResponse | StreamingResponse:
        check_model(body.model, engine)
        engine_req = engine_request(body, engine)
        return await cancel_on_disconnect(
            request, create_images(body, engine_req, engine, event_prefix="image_generation"), drain
        )

    @router.post(
        "/v1/images/edits",
        response_model=None,
        responses={**_IMAGE_RESPONSES, **error_responses(400, 404, 413, 415, 429, 503, 504)},
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"multipart/form-data": {"schema": _edit_form_schema()}},
            }
        },
    )
    async def edits(request: Request) -> JSONResponse | StreamingResponse:
        options, raw_images, raw_mask = await _read_edit_form(request, settings, engine)
        sources = await asyncio.to_thread(
            lambda: tuple(decode_image(b, param="image", max_pixels=settings.max_input_pixels) for b in raw_images)
        )
        mask = None
        if raw_mask is not None:
            # The mask's alpha channel is its meaning (transparent: edit here), so it is kept.
            mask = await asyncio.to_thread(decode_image, raw_mask, param="mask", max_pixels=settings.max_input_pixels,
                                           keep_alpha=True)
            if mask.size != sources[0].size:
                raise APIError(400, f"mask: size {mask.size[0]}x{mask.size[1]} differs from the image's "
                               f"{sources[0].size[0]}x{sources[0].size[1]}", param="mask")
        engine_req = engine_request(options, engine, source_images=sources, mask=mask)
        return await cancel_on_disconnect(
            request, create_images(options, engine_req, engine, event_prefix="image_edit"), drain
        )

    return router


def _edit_form_schema() -> dict:
    schema = ImageEditOptions.model_json_schema()
    schema["properties"]["image"] = {"type": "string", "format": "binary"}
    schema["properties"]["mask"] = {"type": "string", "format": "binary"}
    schema["required"] = sorted({*schema.get("required", []), "image"})
    return schema


async def _read_edit_form(
    request: Request, settings: Settings, engine: EngineClient
) -> tuple[ImageEditOptions, list[bytes], bytes | None]:
    """The options, image bytes and mask bytes of an edit's multipart body, checked before any decoding."""
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise APIError(415, "images/edits takes multipart/form-data", code="unsupported_media_type")
    try:
        form = await request.form(max_files=settings.max_images_per_request + 1, max_fields=64)
    except StarletteHTTPException as exc:  # Starlette's multipart parser refused the body
        raise APIError(400, f"malformed multipart body: {exc.detail}", code="invalid_multipart") from exc
    try:
        fields = {k: v for k, v in form.multi_items() if k not in _FILE_FIELDS}
        for key, value in fields.items():
            if isinstance(value, UploadFile):
                raise APIError(400, f"{key}: unexpected file field", param=key)
        try:
            options = ImageEditOptions.model_validate(fields)
        except ValidationError as exc:
            raise RequestValidationError(exc.errors(), body=fields) from exc
        check_model(options.model, engine)
        uploads = [v for k, v in form.multi_items() if k in ("image", "image[]")]
        if not uploads:
            raise APIError(400, "image: at least one image file is required", param="image")
        if any(not isinstance(u, UploadFile) for u in uploads):
            raise APIError(400, "image: must be a file upload", param="image")
        if len(uploads) > settings.max_images_per_request:
            raise APIError(400, f"{len(uploads)} images in one request exceed the limit of "
                           f"{settings.max_images_per_request}", param="image")
        mask_upload = form.get("mask")
        if mask_upload is not None and not isinstance(mask_upload, UploadFile):
            raise APIError(400, "mask: must be a file upload", param="mask")
        raw_images = [await u.read() for u in uploads]  # type: ignore[union-attr]
        raw_mask = await mask_upload.read() if mask_upload is not None else None
    finally:
        await form.close()
    return options, raw_images, raw_mask
