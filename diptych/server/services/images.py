"""Image generations and edits: HTTP schema → engine request, engine events → OpenAI responses."""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import AsyncIterator

from fastapi.responses import JSONResponse, StreamingResponse
from PIL import Image

from diptych.engine.protocol import EngineClient
from diptych.server.errors import APIError
from diptych.server.media import encode_image
from diptych.server.schemas.images import ImageData, ImageOptions, ImagesResponse, ImageUsage
from diptych.server.sse import sse_data, sse_response
from diptych.types import ImageEvent, ImageRequest, ImagesFinished, PartialImage


# ASCII digits only, and few of them: str.isdigit() also accepts '²', which int() refuses, and
# int() refuses strings of more than 4300 digits; both used to escape as 500s.
_SIZE = re.compile(r"([0-9]{1,6})x([0-9]{1,6})")


def parse_size(size: str, default: tuple[int, int]) -> tuple[int, int]:
    if size == "auto":
        return default
    match = _SIZE.fullmatch(size.lower())
    if match is None:
        shown = size if len(size) <= 40 else size[:40] + "..."
        raise APIError(400, f"size must be WIDTHxHEIGHT (for example 256x256) or auto, not {shown!r}", param="size",
                       code="invalid_size")
    return int(match.group(1)), int(match.group(2))


def engine_request(
    options: ImageOptions,
    engine: EngineClient,
    *,
    source_images: tuple[Image.Image, ...] = (),
    mask: Image.Image | None = None,
) -> ImageRequest:
    caps = engine.card.capabilities
    width, height = parse_size(options.size, caps.default_size)
    return ImageRequest(
        request_id=f"img-{uuid.uuid4().hex}",
        prompt=options.prompt,
        width=width,
        height=height,
        n=options.n,
        negative_prompt=options.negative_prompt,
        num_inference_steps=options.num_inference_steps or caps.default_steps,
        guidance_scale=caps.default_guidance_scale if options.guidance_scale is None else options.guidance_scale,
        seed=options.seed,
        source_images=source_images,
        mask=mask,
        partial_images=options.partial_images if options.stream else 0,
        temperature=1.0 if options.temperature is None else options.temperature,
        top_k=options.top_k or 0,
        top_p=1.0 if options.top_p is None else options.top_p,
    )


async def create_images(
    options: ImageOptions, request: ImageRequest, engine: EngineClient, *, event_prefix: str
) -> JSONResponse | StreamingResponse:
    """Run ``request``; ``event_prefix`` is ``image_generation`` or ``image_edit`` for streamed events."""
    events = engine.images(request)
    try:
        first = await anext(events)  # refusals keep their status
    except BaseException:
        await events.aclose()  # type: ignore[attr-defined]
        raise
    size = f"{request.width}x{request.height}"
    if options.stream:
        return sse_response(_stream(first, events, options, size, event_prefix))
    try:
        finished = await _last(first, events)
    finally:
        await events.aclose()  # type: ignore[attr-defined]
    encoded = await asyncio.to_thread(
        lambda: [encode_image(img, options.output_format, options.output_compression) for img in finished.images]
    )
    response = ImagesResponse(
        created=int(time.time()),
        data=[ImageData(b64_json=b64) for b64 in encoded],
        output_format=options.output_format,
        size=size,
        usage=_usage(finished),
    )
    return JSONResponse(response.model_dump(exclude_none=True))


def _usage(finished: ImagesFinished) -> ImageUsage:
    return ImageUsage(
        input_tokens=finished.prompt_tokens,
        output_tokens=0,
        total_tokens=finished.prompt_tokens,
        input_tokens_details={"text_tokens": finished.prompt_tokens, "image_tokens": 0},
    )


async def _last(first: ImageEvent, events: AsyncIterator[ImageEvent]) -> ImagesFinished:
    event = first
    while not isinstance(event, ImagesFinished):
        event = await anext(events)
    return event


async def _stream(
    first: ImageEvent, events: AsyncIterator[ImageEvent], options: ImageOptions, size: str, prefix: str
) -> AsyncIterator[str]:
    fmt, compression = options.output_format, options.output_compression
    common = {"size": size, "quality": "auto", "background": "opaque", "output_format": fmt}
    event = first
    while True:
        if isinstance(event, PartialImage):
            b64 = await asyncio.to_thread(encode_image, event.image, fmt, compression)
            yield sse_data(
                {
                    "type": f"{prefix}.partial_image",
                    "b64_json": b64,
                    "created_at": int(time.time()),
                    "partial_image_index": event.partial_index,
                    "image_index": event.index,
                    "progress": {"step": event.step, "total": event.total},
                    **common,
                },
                event=f"{prefix}.partial_image",
            )
        elif isinstance(event, ImagesFinished):
            usage = _usage(event).model_dump()
            for index, image in enumerate(event.images):
                b64 = await asyncio.to_thread(encode_image, image, fmt, compression)
                yield sse_data(
                    {
                        "type": f"{prefix}.completed",
                        "b64_json": b64,
                        "created_at": int(time.time()),
                        "image_index": index,
                        "usage": usage,
                        **common,
                    },
                    event=f"{prefix}.completed",
                )
            return
        event = await anext(events)
