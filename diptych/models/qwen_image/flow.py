"""The denoising stages of Qwen-Image / Qwen-Image-Edit, run inside the flow worker.

Stages as in diffusers' ``QwenImagePipeline`` / ``QwenImageEditPipeline`` — encode prompt,
prepare latents, timesteps, denoise, decode — but split at step granularity and taken over
many requests at once: ``prepare`` encodes the prompts of every request admitted at a step
together (through a cache, ``conditioning.py``), ``step`` runs one transformer forward per
image layout with both guidance branches of every image in it (``denoise.py``), and
``preview`` / ``decode`` batch the VAE (``decode.py``). Every per-request value lives in a
:class:`QwenImageFlowState`; each request's noise comes from its own seeded generator, so
its image does not depend on what it was batched with. The guidance rule is in ``state.py``.

An edit checkpoint given no source image generates from text as ``QwenImagePipeline`` built
from the same components would (text template, no source latents).
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from diptych.models.base import FlowCost
from diptych.models.qwen_image import latents as lat
from diptych.models.qwen_image.components import QwenImageComponents, load_components
from diptych.models.qwen_image.conditioning import DEFAULT_CACHE_BYTES, Conditioner, PromptSpec, image_digest
from diptych.models.qwen_image.decode import DecodeItem, LatentDecoder
from diptych.models.qwen_image.denoise import velocities
from diptych.models.qwen_image.prompt import PromptEmbedding, PromptEncoder
from diptych.models.qwen_image.schedule import euler_advance, flow_schedule, previewable
from diptych.models.qwen_image.source import DEFAULT_SOURCE_AREA, prepare_source, source_size
from diptych.models.qwen_image.state import EMPTY_NEGATIVE_PROMPT, QwenImageFlowState, resolve_guidance
from diptych.models.qwen_image.vae_fast import install_single_frame_paths
from diptych.types import CacheStats, ImageRequest

__all__ = ["EMPTY_NEGATIVE_PROMPT", "QwenImageFlowRunner", "QwenImageFlowState", "resolve_guidance"]

logger = logging.getLogger(__name__)

# Tokens of the chat template kept after the prompt (<|im_end|>, the assistant header), for pricing.
_TEMPLATE_TAIL_TOKENS = 8
# The VLM sees 28x28-pixel cells of the source image (14-pixel patches merged 2x2), for pricing.
_VISION_CELL = 28
# Activation memory of one forward, in multiples of its hidden states (q, k, v and attention
# output of both streams, the 4x-wide MLP, residuals): a deliberate over-estimate.
_ACTIVATION_FACTOR = 12


@dataclass(frozen=True)
class Source:
    """An edit's source image as the VLM and the VAE see it, and its digest (the cache key)."""

    image: Image.Image
    key: str


class QwenImageFlowRunner:
    """:class:`~diptych.models.base.FlowRunner` for Qwen-Image checkpoints in diffusers' layout."""

    def __init__(
        self,
        model_dir: Path,
        device: str = "cpu",
        *,
        dtype: torch.dtype = torch.float32,
        source_area: int = DEFAULT_SOURCE_AREA,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
        decoder: LatentDecoder | None = None,
    ) -> None:
        self._parts: QwenImageComponents = load_components(Path(model_dir), device, dtype)
        install_single_frame_paths(self._parts.vae)  # images are single frames of a video VAE
        self._prompts = PromptEncoder(
            self._parts.text_encoder, self._parts.tokenizer, self._parts.processor, self._parts.dtype
        )
        self._conditioner = Conditioner(self._prompts, self._encode_source, cache_bytes)
        self._decoder = decoder or LatentDecoder(self._parts.vae, self._parts.vae_scale_factor)
        self._source_area = source_area

    @property
    def is_edit(self) -> bool:
        return self._parts.is_edit

    @property
    def size_multiple(self) -> int:
        """Image sides must be multiples of this: a VAE cell times the 2x2 patch."""
        return self._parts.vae_scale_factor * lat.PATCH

    @property
    def prompt_encoder(self) -> PromptEncoder:
        return self._prompts

    @property
    def conditioner(self) -> Conditioner:
        return self._conditioner

    @property
    def decoder(self) -> LatentDecoder:
        return self._decoder

    def cache_stats(self) -> dict[str, CacheStats]:
        """The prompt-embedding and source-latent cache (one LRU, ``conditioning.py``)."""
        cache = self._conditioner.cache
        return {"prompt": CacheStats(cache.hits, cache.misses, cache.bytes, len(cache))}

    # -- check and price ---------------------------------------------------------------

    def check(self, request: ImageRequest) -> FlowCost:
        multiple = self.size_multiple
        if request.width % multiple or request.height % multiple:
            raise ValueError(f"image size {request.width}x{request.height} is not a multiple of {multiple}")
        if request.n < 1 or request.num_inference_steps < 1:
            raise ValueError(f"n ({request.n}) and num_inference_steps ({request.num_inference_steps}) must be >= 1")
        if request.mask is not None:
            raise ValueError("Qwen-Image does not support a mask")
        if request.is_edit and not self.is_edit:
            raise ValueError("this Qwen-Image checkpoint generates only; edit needs a Qwen-Image-Edit checkpoint")
        if len(request.source_images) > 1:
            raise ValueError(f"Qwen-Image-Edit takes one source image, got {len(request.source_images)}")
        return self._price(request)

    def _price(self, request: ImageRequest) -> FlowCost:
        """Tokens per step and an activation-memory estimate, from sizes and a tokenizer count (no model call)."""
        image_tokens = (request.height // self.size_multiple) * (request.width // self.size_multiple)
        vision_tokens = 0
        if request.is_edit:
            source = request.source_images[0]
            width, height = source_size(source.width, source.height, self._source_area)
            image_tokens += (height // self.size_multiple) * (width // self.size_multiple)
            vision_tokens = (height // _VISION_CELL) * (width // _VISION_CELL)
        negative = resolve_guidance(request.guidance_scale, request.negative_prompt)
        prompts = [request.prompt] if negative is None else [request.prompt, negative]
        rows = [image_tokens + vision_tokens + self._count(text) + _TEMPLATE_TAIL_TOKENS for text in prompts]
        config = self._parts.transformer.config
        heads, width = config.num_attention_heads, config.num_attention_heads * config.attention_head_dim
        item = torch.finfo(self._parts.dtype).bits // 8
        per_image = sum(length * width * _ACTIVATION_FACTOR + heads * length * length for length in rows) * item
        return FlowCost(tokens=request.n * sum(rows), memory_bytes=request.n * per_image)

    def _count(self, text: str) -> int:
        return len(self._prompts.tokenizer(text)["input_ids"])

    # -- prepare -------------------------------------------------------------------------

    @torch.inference_mode()
    def prepare(self, requests: Sequence[ImageRequest]) -> list[list[QwenImageFlowState]]:
        for request in requests:
            self.check(request)
        sources = [self._source(request) for request in requests]
        branches = [self._prompt_specs(request, source) for request, source in zip(requests, sources, strict=True)]
        # One prompt-encoder pass (per template) over every prompt of every request.
        embeddings = iter(self._conditioner.prompts([spec for specs in branches for spec in specs]))
        prepared = []
        for request, source, specs in zip(requests, sources, branches, strict=True):
            cond, *uncond = [next(embeddings) for _ in specs]
            prepared.append(self._initial_states(request, source, cond, uncond[0] if uncond else None))
        return prepared

    def _source(self, request: ImageRequest) -> Source | None:
        if not request.is_edit:
            return None
        image = prepare_source(request.source_images[0], self._source_area)
        return Source(image, image_digest(image))

    @staticmethod
    def _prompt_specs(request: ImageRequest, source: Source | None) -> list[PromptSpec]:
        image, key = (source.image, source.key) if source is not None else (None, None)
        negative = resolve_guidance(request.guidance_scale, request.negative_prompt)
        specs = [PromptSpec(request.prompt, image, key)]
        if negative is not None:
            specs.append(PromptSpec(negative, image, key))
        return specs

    def _initial_states(
        self, request: ImageRequest, source: Source | None, cond: PromptEmbedding, uncond: PromptEmbedding | None
    ) -> list[QwenImageFlowState]:
        source_latents, source_shape = None, None
        if source is not None:
            source_latents = self._conditioner.source_latents(source.image, source.key)
            source_shape = (1, source.image.height // self.size_multiple, source.image.width // self.size_multiple)
        noise = self._initial_noise(request)
        sigmas, timesteps = flow_schedule(request.num_inference_steps, noise.shape[1], self._parts.shift)
        device = self._parts.device
        target_shape = (1, request.height // self.size_multiple, request.width // self.size_multiple)
        img_shapes = (target_shape,) if source_shape is None else (target_shape, source_shape)
        return [
            QwenImageFlowState(
                request_id=request.request_id,
                index=i,
                height=request.height,
                width=request.width,
                num_steps=request.num_inference_steps,
                guidance_scale=request.guidance_scale,
                latents=noise[i : i + 1],
                sigmas=sigmas.to(device),
                timesteps=timesteps.to(device),
                cond=cond,
                uncond=uncond,
                img_shapes=img_shapes,
                source_latents=source_latents,
            )
            for i in range(request.n)
        ]

    def _initial_noise(self, request: ImageRequest) -> torch.Tensor:
        """All n images' noise in one draw from the request's own CPU generator, as the pipeline draws it, then packed."""
        seed = request.seed if request.seed is not None else secrets.randbits(63)
        generator = torch.Generator(device="cpu").manual_seed(seed)
        scale = self._parts.vae_scale_factor
        shape = (request.n, 1, self._parts.latent_channels, request.height // scale, request.width // scale)
        noise = torch.randn(shape, generator=generator, dtype=self._parts.dtype)
        return lat.pack(noise).to(self._parts.device)

    def _encode_source(self, source: Image.Image) -> torch.Tensor:
        pixels = lat.pil_to_pixels(source).to(self._parts.device, self._parts.dtype)
        # The distribution's mode, not a sample: the pipeline encodes with sample_mode="argmax".
        encoded = self._parts.vae.encode(pixels).latent_dist.mode()
        config = self._parts.vae.config
        return lat.pack(lat.normalize(encoded, config.latents_mean, config.latents_std))

    # -- step ----------------------------------------------------------------------------

    @torch.inference_mode()
    def step(self, states: list[QwenImageFlowState]) -> None:
        for state in states:
            if state.done:
                raise ValueError(f"request {state.request_id} image {state.index} has finished its {state.num_steps} steps")
        euler_advance(states, velocities(self._parts.transformer, states))

    # -- preview and decode --------------------------------------------------------------

    def preview(self, states: list[QwenImageFlowState]) -> list[Image.Image]:
        """The images the last step's velocities point at (``x0 = x_t - sigma * v``), in one batched decode."""
        cleans = previewable(states)
        return self._decoder.decode([DecodeItem(x, s.height, s.width) for x, s in zip(cleans, states, strict=True)])

    def decode(self, states: list[QwenImageFlowState]) -> list[Image.Image]:
        """Final images, batched by size; returned in the order of ``states``."""
        return self._decoder.decode([DecodeItem(s.latents, s.height, s.width) for s in states])

