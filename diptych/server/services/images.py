"""Image generations and edits: checked options and uploads → an engine request → its events.

The routes parse the HTTP body and shape the response (JSON or server-sent events); the work
between them is here.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass

from PIL import Image

from diptych.engine.protocol import EngineClient
from diptych.models.base import Capabilities, area_size
from diptych.server.errors import APIError
from diptych.server.media import check_image_count, decode_image
from diptych.server.schemas.images import ImageEditOptions, ImageGenerationRequest, ImageOptions
from diptych.server.services.streams import EngineStream, open_stream
from diptych.settings import Settings
from diptych.types import ImageEvent, ImageRequest


@dataclass(frozen=True)
class EditUpload:
    """An edit's multipart body, before any image is decoded."""

    options: ImageEditOptions
    images: tuple[bytes, ...]
    mask: bytes | None


@dataclass
class ImageRun:
    request: ImageRequest
    stream: EngineStream[ImageEvent]


async def generate(body: ImageGenerationRequest, engine: EngineClient) -> ImageRun:
    return await _run(_engine_request(body, engine), engine)


async def edit(upload: EditUpload, engine: EngineClient, settings: Settings) -> ImageRun:
    check_image_count(len(upload.images), settings.max_images_per_request, "image")
    keep_alpha = engine.card.capabilities.reference_alpha
    sources = await asyncio.to_thread(lambda: tuple(
        decode_image(data, param="image", max_pixels=settings.max_input_pixels, keep_alpha=keep_alpha)
        for data in upload.images
    ))
    mask = None
    if upload.mask is not None:
        # The mask's alpha channel is its meaning (transparent: edit here), so it is kept.
        mask = await asyncio.to_thread(decode_image, upload.mask, param="mask", max_pixels=settings.max_input_pixels,
                                       keep_alpha=True)
        if mask.size != sources[0].size:
            raise APIError(400, f"mask: size {mask.size[0]}x{mask.size[1]} differs from the image's "
                           f"{sources[0].size[0]}x{sources[0].size[1]}", param="mask")
    return await _run(_engine_request(upload.options, engine, source_images=sources, mask=mask), engine)


async def _run(request: ImageRequest, engine: EngineClient) -> ImageRun:
    return ImageRun(request, await open_stream(engine.images(request)))


def _engine_request(
    options: ImageOptions,
    engine: EngineClient,
    *,
    source_images: tuple[Image.Image, ...] = (),
    mask: Image.Image | None = None,
) -> ImageRequest:
    caps = engine.card.capabilities
    width, height = options.dimensions(_default_size(caps, source_images))
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


def _default_size(caps: Capabilities, source_images: tuple[Image.Image, ...]) -> tuple[int, int]:
    """The size of a request that names none: the model's default, or for an edit on a model with an
    ``output_resolution``, that area in the last reference's aspect (sides rounded to the size multiple)."""
    if caps.output_resolution is None or not source_images:
        return caps.default_size
    return area_size(*source_images[-1].size, caps.output_resolution, caps.size_multiple)
