"""The denoising stages of Qwen-Image 2.1, run inside the flow worker.

The stages of diffusers' ``QwenImage21Pipeline`` split at step granularity and taken over
many requests at once. The pipeline object itself supplies the steps that are per request
and not per step (reference resizing, prompt encoding, VAE encoding, noise, latent unpacking,
post-processing), so those are diffusers' own code; each step is one packed forward over
every branch of every active image (``packed.py``), newly admitted prefills included.

Per request and branch, the prefix's keys and values live in a :class:`PrefixKV` that the
request's images share; it is freed with the request's states, and admission counts its
bytes in the request's price.

Guidance: a request with ``guidance_scale > 1`` runs a second branch on ``negative_prompt``
(``" "`` when it names none), as the pipeline does when called with
``true_cfg_scale=guidance_scale`` and that negative prompt.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from diptych.models.base import FlowCost, area_size
from diptych.models.qwen_image.decode import plan_chunks
from diptych.models.qwen_image.schedule import ShiftConfig, euler_step, flow_schedule, predicted_clean
from diptych.models.qwen_image.state import resolve_guidance
from diptych.models.qwen_image_21.packed import PackedRow, PrefixKV, install_packed_attention, packed_forward
from diptych.models.qwen_image_21.sequence import TOKENS_PER_SLOT, BranchLayout, layout_branch
from diptych.types import ImageRequest

logger = logging.getLogger(__name__)

# The pipeline works in 16x VAE cells; a VLM slot (32 px) covers 2x2 of them.
VAE_SCALE = 16
SIZE_MULTIPLE = 32
# Activation memory of one forward, in multiples of its hidden states (q, k, v, attention
# output, the 3x-wide gated MLP, residuals, modulation): a deliberate over-estimate.
_ACTIVATION_FACTOR = 16
# Decode at most this many output pixels per VAE call; tile above this size (as Qwen-Image).
_MAX_BATCH_PIXELS = 4 * 1024 * 1024
_TILE_ABOVE_PIXELS = 1152 * 1152


def reference_size(width: int, height: int, resolution: int) -> tuple[int, int]:
    """(width, height) the pipeline resizes a reference to: about ``resolution``² pixels, its aspect, 32-px sides."""
    return area_size(width, height, resolution, SIZE_MULTIPLE)


@dataclass(eq=False)
class QwenImage21FlowState:
    """One image of one request, between denoising steps."""

    request_id: str
    index: int  # which of the request's n images
    height: int
    width: int
    num_steps: int
    guidance_scale: float
    latents: torch.Tensor  # [target tokens, C]
    sigmas: torch.Tensor  # [num_steps + 1], ends at 0
    timesteps: torch.Tensor  # [num_steps]
    layouts: tuple[BranchLayout, ...]  # conditional branch, then the negative one when guidance runs
    prefixes: tuple[PrefixKV, ...]  # one per branch, shared by the request's images
    prompt_tokens: int
    step_index: int = 0
    pred_clean: torch.Tensor | None = field(default=None, repr=False)

    @property
    def done(self) -> bool:
        return self.step_index >= self.num_steps


class QwenImage21FlowRunner:
    """:class:`~diptych.models.base.FlowRunner` for Qwen-Image 2.1 checkpoints in diffusers' layout."""

    def __init__(
        self,
        model_dir: Path,
        device: str = "cpu",
        *,
        dtype: torch.dtype = torch.float32,
        output_resolution: int = 1024,
        max_references: int = 10,
        attention_backend: str = "auto",
    ) -> None:
        from diffusers import QwenImage21Pipeline

        from diptych import compat

        compat.install()  # the processor's video slot wants torchvision otherwise
        self._pipe = QwenImage21Pipeline.from_pretrained(model_dir, dtype=dtype).to(device)
        for module in (self._pipe.transformer, self._pipe.vae, self._pipe.text_encoder):
            module.eval()
        self._transformer = self._pipe.transformer
        if not self._transformer.config.causal_condition:
            raise ValueError(f"{model_dir}: the transformer lacks causal_condition, so its prefix cannot be cached")
        install_packed_attention(self._transformer)
        self._shift = ShiftConfig.from_scheduler_config(self._pipe.scheduler.config)
        sample_sigmas = self._pipe.config.get("sample_sigmas")
        self._sample_sigmas = None if sample_sigmas is None else np.asarray(sample_sigmas, dtype=np.float64)
        self._dtype = dtype
        self._device = torch.device(device)
        self.output_resolution = output_resolution
        self.max_references = max_references
        self.attention_backend = attention_backend  # diptych.kernels' choice; "auto" by device

    @property
    def pipeline(self) -> Any:
        return self._pipe

    # -- check and price ---------------------------------------------------------------

    def check(self, request: ImageRequest) -> FlowCost:
        if request.width % SIZE_MULTIPLE or request.height % SIZE_MULTIPLE:
            raise ValueError(f"image size {request.width}x{request.height} is not a multiple of {SIZE_MULTIPLE}")
        if request.n < 1 or request.num_inference_steps < 1:
            raise ValueError(f"n ({request.n}) and num_inference_steps ({request.num_inference_steps}) must be >= 1")
        if self._sample_sigmas is not None and request.num_inference_steps != len(self._sample_sigmas):
            raise ValueError(f"num_inference_steps: this checkpoint's schedule has {len(self._sample_sigmas)} steps, "
                             f"got {request.num_inference_steps}")
        if request.mask is not None:
            raise ValueError("Qwen-Image 2.1 does not support a mask")
        if len(request.source_images) > self.max_references:
            raise ValueError(f"image: {len(request.source_images)} reference images exceed this model's limit "
                             f"of {self.max_references}")
        return self._price(request)

    def _price(self, request: ImageRequest) -> FlowCost:
        """Tokens per step and memory (prefix keys and values, activations) from sizes and a token count."""
        target = (request.height // VAE_SCALE) * (request.width // VAE_SCALE)
        slots = [
            (w // SIZE_MULTIPLE) * (h // SIZE_MULTIPLE)
            for w, h in (reference_size(*image.size, self.output_resolution) for image in request.source_images)
        ]
        negative = resolve_guidance(request.guidance_scale, request.negative_prompt)
        prompts = [request.prompt] if negative is None else [request.prompt, negative]
        prefixes = [self._count(text, len(slots)) + (TOKENS_PER_SLOT - 1) * sum(slots) for text in prompts]
        config = self._transformer.config
        inner = config.num_attention_heads * config.attention_head_dim
        item = torch.finfo(self._dtype).bits // 8
        stored = sum(2 * config.num_layers * prefix * inner for prefix in prefixes)
        # Every image's step: its target tokens per branch; the first step also runs the prefixes.
        tokens = request.n * len(prompts) * target + sum(prefixes)
        scores = config.num_attention_heads * sum(target * (prefix + target) for prefix in prefixes)
        activations = tokens * inner * _ACTIVATION_FACTOR + request.n * scores
        return FlowCost(tokens=tokens, memory_bytes=(stored + activations) * item)

    def _count(self, prompt: str, references: int) -> int:
        """Tokens of the prompt as the transformer sees them, each reference counted as one slot."""
        text = self._pipe.prompt_template_t2i if not references else self._pipe.prompt_template_ti2i.replace(
            "<image1><|vision_start|><|image_pad|><|vision_end|>",
            " ".join(f"<image{i}><|vision_start|><|image_pad|><|vision_end|>" for i in range(1, references + 1)),
        )
        ids = self._pipe.processor.tokenizer(text.format(prompt or " "))["input_ids"]
        return len(ids) - self._pipe._drop_idx

    # -- prepare -------------------------------------------------------------------------

    @torch.inference_mode()
    def prepare(self, requests: Sequence[ImageRequest]) -> list[list[QwenImage21FlowState]]:
        for request in requests:
            self.check(request)
        return [self._prepare_one(request) for request in requests]

    def _prepare_one(self, request: ImageRequest) -> list[QwenImage21FlowState]:
        pipe = self._pipe
        vlm_images, vae_images, shapes = [], [], []
        for image in request.source_images:
            rgba = image if image.mode == "RGBA" else image.convert("RGBA")
            width, height = reference_size(*rgba.size, self.output_resolution)
            vlm_images.append(pipe.image_processor.resize(rgba, width=width, height=height))
            vae_images.append(pipe.image_processor.preprocess(rgba, width=width, height=height).unsqueeze(2))
            shapes.append((1, height // VAE_SCALE, width // VAE_SCALE))
        shapes.append((1, request.height // VAE_SCALE, request.width // VAE_SCALE))
        negative = resolve_guidance(request.guidance_scale, request.negative_prompt)
        prompts = [request.prompt] if negative is None else [request.prompt, negative]
        encoded = [pipe.encode_prompt(prompt, image=vlm_images or None, device=self._device) for prompt in prompts]

        seed = request.seed if request.seed is not None else secrets.randbits(63)
        generator = torch.Generator(device="cpu").manual_seed(seed)
        channels = self._transformer.config.in_channels
        dtype = encoded[0][0].dtype
        noise, condition = pipe.prepare_latents(
            vae_images or None, request.n, channels, request.height, request.width, dtype, self._device, generator
        )
        condition_latents = None if condition is None else condition[0]
        layouts, prefixes = [], []
        for embeds, mask, slots in encoded:
            if mask is not None:
                raise RuntimeError("a single prompt came back padded")
            layout, inputs = layout_branch(self._transformer, embeds[0], slots[0], condition_latents, shapes)
            layouts.append(layout)
            prefixes.append(PrefixKV(layout.prefix_len, inputs))
        sigmas, timesteps = flow_schedule(request.num_inference_steps, noise.shape[1], self._shift,
                                          base_sigmas=self._sample_sigmas)
        return [
            QwenImage21FlowState(
                request_id=request.request_id,
                index=i,
                height=request.height,
                width=request.width,
                num_steps=request.num_inference_steps,
                guidance_scale=request.guidance_scale,
                latents=noise[i],
                sigmas=sigmas.to(self._device),
                timesteps=timesteps.to(self._device),
                layouts=tuple(layouts),
                prefixes=tuple(prefixes),
                prompt_tokens=int(encoded[0][0].shape[1]),
            )
            for i in range(request.n)
        ]

    # -- step ----------------------------------------------------------------------------

    @torch.inference_mode()
    def step(self, states: list[QwenImage21FlowState]) -> None:
        for state in states:
            if state.done:
                raise ValueError(f"request {state.request_id} image {state.index} has finished its {state.num_steps} steps")
        rows, filling = [], set()
        for state in states:
            # As the pipeline: the timestep in the latents' dtype, then scaled to [0, 1].
            timestep = state.timesteps[state.step_index].to(state.latents.dtype) / 1000
            for layout, prefix in zip(state.layouts, state.prefixes, strict=True):
                fills = not prefix.complete and id(prefix) not in filling
                filling.add(id(prefix))
                rows.append(PackedRow(layout, prefix, state.latents, timestep, fills))
        outputs = iter(packed_forward(self._transformer, rows, self.attention_backend))
        # Compute every update before touching any state: a failure leaves them all as they were.
        updates = []
        for state in states:
            velocity = next(outputs)
            if len(state.layouts) > 1:
                negative = next(outputs)
                velocity = negative + state.guidance_scale * (velocity - negative)
            i = state.step_index
            sigma, sigma_next = state.sigmas[i], state.sigmas[i + 1]
            updates.append((predicted_clean(state.latents, velocity, sigma),
                            euler_step(state.latents, velocity, sigma, sigma_next)))
        for row in rows:
            if row.fills_prefix:
                row.prefix.finish()
        for state, (clean, latents) in zip(states, updates, strict=True):
            state.pred_clean, state.latents = clean, latents
            state.step_index += 1

    # -- preview and decode --------------------------------------------------------------

    def preview(self, states: list[QwenImage21FlowState]) -> list[Image.Image]:
        """The images the last step's velocities point at (``x0 = x_t - sigma * v``), in one batched decode."""
        for state in states:
            if state.pred_clean is None:
                raise ValueError(f"request {state.request_id} image {state.index} has no step yet to preview")
        return self._decode([(s.pred_clean, s.height, s.width) for s in states])  # type: ignore[misc]

    def decode(self, states: list[QwenImage21FlowState]) -> list[Image.Image]:
        """Final images, batched by size; returned in the order of ``states``."""
        return self._decode([(s.latents, s.height, s.width) for s in states])

    @torch.inference_mode()
    def _decode(self, items: list[tuple[torch.Tensor, int, int]]) -> list[Image.Image]:
        from diptych.models.qwen_image.decode import DecodeItem

        plan = plan_chunks([DecodeItem(t, h, w) for t, h, w in items], _MAX_BATCH_PIXELS, _TILE_ABOVE_PIXELS)
        images: list[Image.Image | None] = [None] * len(items)
        for positions, tiled in plan:
            _, height, width = items[positions[0]]
            decoded = self._decode_same_size(torch.stack([items[p][0] for p in positions]), height, width, tiled)
            for position, image in zip(positions, decoded, strict=True):
                images[position] = image
        return [image for image in images if image is not None]

    def _decode_same_size(self, latents: torch.Tensor, height: int, width: int, tiled: bool) -> list[Image.Image]:
        """The pipeline's decode stage, over a batch of same-size latents ``[B, tokens, C]``."""
        pipe, vae = self._pipe, self._pipe.vae
        latents = pipe._unpack_latents(latents, height, width, VAE_SCALE).to(vae.dtype)
        shape = (1, vae.config.z_dim, 1, 1, 1)
        mean = torch.tensor(vae.config.latents_mean).view(shape).to(latents.device, latents.dtype)
        std = torch.tensor(vae.config.latents_std).view(shape).to(latents.device, latents.dtype)
        latents = latents * std + mean
        decode = vae.tiled_decode if tiled else vae.decode
        frames = decode(latents, return_dict=False)[0][:, :, 0]
        return list(pipe.image_processor.postprocess(frames, output_type="pil"))
