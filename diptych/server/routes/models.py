from __future__ import annotations

import time

from fastapi import APIRouter

from diptych.engine.protocol import EngineClient
from diptych.server.routes.common import check_model
from diptych.server.schemas.errors import error_responses
from diptych.server.schemas.models import ModelCapabilities, ModelInfo, ModelList
from diptych.settings import Settings


def models_router(engine: EngineClient, settings: Settings) -> APIRouter:
    router = APIRouter()
    created = int(time.time())

    def info() -> ModelInfo:
        card = engine.card
        caps = card.capabilities
        width, height = caps.default_size
        return ModelInfo(
            id=card.name,
            created=created,
            family=card.family,
            architecture=card.architecture,
            dtype=card.dtype,  # type: ignore[arg-type]
            capabilities=ModelCapabilities(
                tasks=list(caps.names()),
                min_image_side=caps.min_side,
                max_image_side=min(caps.max_side, settings.max_image_side),
                image_size_multiple=caps.size_multiple,
                default_size=f"{width}x{height}",
                max_n=settings.max_n,
                max_inference_steps=settings.max_steps,
                default_inference_steps=caps.default_steps,
                default_guidance_scale=caps.default_guidance_scale,
                max_source_images=min(caps.max_source_images, settings.max_images_per_request),
                supports_mask=caps.supports_mask,
                reference_alpha=caps.reference_alpha,
                output_resolution=caps.output_resolution,
                tool_parser=caps.tool_parser,
                max_model_len=card.max_model_len,
                max_prompt_tokens=settings.max_prompt_tokens,
            ),
        )

    @router.get("/v1/models", responses=error_responses())
    async def list_models() -> ModelList:
        return ModelList(data=[info()])

    @router.get("/v1/models/{model_id:path}", responses=error_responses(404))
    async def get_model(model_id: str) -> ModelInfo:
        check_model(model_id, engine)
        return info()

    return router
