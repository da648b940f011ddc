"""OpenAI images schemas (generations, edits), with Diptych's documented extensions."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

OutputFormat = Literal["png", "jpeg", "webp"]


class ImageOptions(BaseModel):
    """Fields shared by generations and edits (edits arrive as multipart form fields)."""

    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(min_length=1, max_length=32000)
    model: str | None = None
    n: int = Field(default=1, ge=1)
    size: str = Field(default="auto", pattern=r"^(auto|[0-9]{1,6}[xX][0-9]{1,6})$",
                      description="WIDTHxHEIGHT, or auto for the model's default size.")
    response_format: Literal["b64_json"] = Field(
        default="b64_json", description="Only b64_json: the server hosts no image URLs."
    )
    output_format: OutputFormat = "png"
    output_compression: int | None = Field(default=None, ge=0, le=100)
    background: Literal["opaque", "auto"] | None = None
    quality: Literal["low", "medium", "high", "auto", "standard", "hd"] | None = None
    moderation: Literal["low", "auto"] | None = None
    stream: bool = False
    partial_images: int = Field(default=0, ge=0, le=3)
    user: str | None = None
    safety_identifier: str | None = None
    # Extensions.
    seed: int | None = Field(default=None, ge=0, le=2**63 - 1)
    negative_prompt: str | None = Field(default=None, max_length=32000)
    num_inference_steps: int | None = Field(default=None, ge=1)
    guidance_scale: float | None = Field(default=None, ge=0.0, le=30.0)
    # Sampling of image tokens, for models that generate images token by token.
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_k: int | None = Field(default=None, ge=0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)

    def dimensions(self, default: tuple[int, int]) -> tuple[int, int]:
        """``size`` as (width, height); ``auto`` is the model's ``default``. The pattern admits only these."""
        if self.size == "auto":
            return default
        width, height = self.size.lower().split("x")
        return int(width), int(height)


class ImageGenerationRequest(ImageOptions):
    # A JSON body: values must have the type the schema publishes (no false for a number).
    # Edits stay lax: their fields arrive as multipart strings.
    model_config = ConfigDict(extra="forbid", strict=True)

    style: Literal["vivid", "natural"] | None = None


class ImageEditOptions(ImageOptions):
    input_fidelity: Literal["high", "low"] | None = None


class ImageData(BaseModel):
    b64_json: str
    revised_prompt: str | None = None


class ImageUsage(BaseModel):
    input_tokens: int
    output_tokens: int
    total_tokens: int
    input_tokens_details: dict[str, int]


class ImagesResponse(BaseModel):
    created: int
    data: list[ImageData]
    output_format: OutputFormat
    size: str
    quality: Literal["auto"] = "auto"
    background: Literal["opaque"] = "opaque"
    usage: ImageUsage | None = None
