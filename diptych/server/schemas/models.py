"""`GET /v1/models` schemas: OpenAI's list, with each model's family and capabilities."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel


class ModelCapabilities(BaseModel):
    tasks: list[Literal["understand", "generate", "edit"]]
    min_image_side: int
    max_image_side: int
    image_size_multiple: int
    default_size: str
    max_n: int
    max_inference_steps: int
    default_inference_steps: int
    default_guidance_scale: float
    max_source_images: int
    supports_mask: bool
    reference_alpha: bool
    output_resolution: int | None
    tool_parser: str | None  # vLLM's parser of the model's tool calls; null: chats take no tools
    max_model_len: int
    max_prompt_tokens: int


class ModelInfo(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "diptych"
    family: str
    architecture: str
    dtype: Literal["float32", "bfloat16", "float16"]
    capabilities: ModelCapabilities


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelInfo]
