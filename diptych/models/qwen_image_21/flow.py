"""The denoising stages of Qwen-Image 2.1, run inside the flow worker.

The stages of diffusers' ``QwenImage21Pipeline`` split at step granularity and taken over
many requests at once. The pipeline object itself supplies what is per request and not per
step (reference resizing, VAE encoding, noise, latent unpacking, post-processing), so those
are diffusers' own code; prompts go through ``vlm_prefix.py`` (equal to the pipeline's
``encode_prompt``); each step is one packed forward over every branch of every active image
(``packed.py``), newly admitted prefills included.

**Prefixes, computed once.** A branch's prefix is a chain of :class:`PrefixKV` chunks: with
references, the template up to the last reference's ``<|vision_end|>`` (which no
instruction changes: both guidance branches and every later edit of the same pictures share
it), then the rest; without, one chunk. Chunks are kept across requests in a
:class:`PrefixCache` keyed by their text and the references' digests, together with the
VLM's cache of the first chunk, so a hit skips the VLM, the VAE and the transformer on what
it covers (the images of one request share their chains too). A chunk belongs to the
requests that hold it and to the cache: it is freed when neither does, and a request's
price counts its chunks as if nothing were cached.

Guidance: a request with ``guidance_scale > 1`` runs a second branch on ``negative_prompt``
(``" "`` when it names none), as the pipeline does when called with
``true_cfg_scale=guidance_scale`` and that negative prompt.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import weakref
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from diptych.models.base import FlowCost, area_size
from diptych.models.qwen_image.decode import plan_chunks
from diptych.models.qwen_image.schedule import ShiftConfig, euler_advance, flow_schedule, previewable
from diptych.models.qwen_image.state import resolve_guidance
from diptych.models.qwen_image_21.packed import PackedRow, PrefixKV, install_packed_attention, packed_forward
from diptych.models.qwen_image_21.prefix_cache import Chain, PrefixCache
from diptych.models.qwen_image_21.sequence import TOKENS_PER_SLOT, BranchLayout, branch_layout, prefix_inputs
from diptych.models.qwen_image_21.vlm_prefix import VLMPrefix, VLMPrefixEncoder, render_prompt, vision_prefix_end
from diptych.types import CacheStats, ImageRequest

logger = logging.getLogger(__name__)

# The pipeline works in 16x VAE cells; a VLM slot (32 px) covers 2x2 of them.
VAE_SCALE = 16
SIZE_MULTIPLE = 32
# Activation memory of one forward, in multiples of its hidden states (q, k, v and their
# float32 rotary copies, the packed keys and values, the 3x-wide gated MLP, residuals, the
# per-token modulation). Measured on the mid checkpoint, a first step of 8 mixed requests
# rose RSS by 892 MiB (docs/benchmarks.md); 32 prices it at 1123 MiB.
_ACTIVATION_FACTOR = 32
# Decode at most this many output pixels per VAE call; tile above this size (as Qwen-Image).
_MAX_BATCH_PIXELS = 4 * 1024 * 1024
_TILE_ABOVE_PIXELS = 1152 * 1152
# Prefix chunks kept across requests, by default (the server passes its setting).
DEFAULT_CACHE_BYTES = 512 * 1024 * 1024


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
    prefixes: tuple[Chain, ...]  # each branch's prefix chunks, shared by the request's images and beyond
    prompt_tokens: int
    step_index: int = 0
    pred_clean: torch.Tensor | None = field(default=None, repr=False)

    @property
    def done(self) -> bool:
        return self.step_index >= self.num_steps


@dataclass(frozen=True, eq=False)
class Reference:
    """A reference image as the pipeline prepares it, and its digest (part of the prefix cache's keys)."""

    image: Image.Image  # RGBA, resized: what the VAE encodes
    vlm_image: Image.Image  # RGB, composited onto white: what the VLM sees
    shape: tuple[int, int, int]  # (frames, rows, cols) in latent tokens
    digest: str


@dataclass(frozen=True, eq=False)
class ChunkTokens:
    """What a chunk keeps of its tokens: their image slots, and the VLM's cache when others may extend it."""

    slots: torch.Tensor  # [VLM tokens] bool
    vlm: VLMPrefix | None

    @property
    def nbytes(self) -> int:
        return self.slots.numel() + (self.vlm.nbytes if self.vlm is not None else 0)


def _slots(chain: Sequence[PrefixKV]) -> torch.Tensor:
    return torch.cat([chunk.extra.slots for chunk in chain])


def _claim(chain: Chain, claimed: set[int]) -> int:
    """Where a row starts filling ``chain``: after the chunks that are stored or filled by an earlier row of the pack."""
    fills_from = next((i for i, c in enumerate(chain) if not c.complete and id(c) not in claimed), len(chain))
    for chunk in chain[fills_from:]:
        if chunk.complete or id(chunk) in claimed:  # a chunk is filled only after every chunk before it
            raise RuntimeError("a prefix chunk is stored while one before it is not")
        claimed.add(id(chunk))
    return fills_from


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
        cache_bytes: int = DEFAULT_CACHE_BYTES,
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
        self._vlm = VLMPrefixEncoder(self._pipe.text_encoder, self._pipe.processor)
        self._drop = self._pipe._drop_idx  # the system turn's tokens, which the transformer never sees
        self._image_token_id = self._pipe._img_token_id
        self._cache = PrefixCache(cache_bytes)
        self._live: weakref.WeakSet[PrefixKV] = weakref.WeakSet()

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
        ids = self._pipe.processor.tokenizer(render_prompt(prompt, references))["input_ids"]
        return len(ids) - self._drop

    # -- prepare -------------------------------------------------------------------------

    @torch.inference_mode()
    def prepare(self, requests: Sequence[ImageRequest]) -> list[list[QwenImage21FlowState]]:
        for request in requests:
            self.check(request)
        # Chunks made in this call, so the requests' branches share them whatever the cache keeps.
        made: dict[Hashable, Chain] = {}
        return [self._prepare_one(request, made) for request in requests]

    def _prepare_one(self, request: ImageRequest, made: dict[Hashable, Chain]) -> list[QwenImage21FlowState]:
        references = [self._reference(image) for image in request.source_images]
        shapes = [reference.shape for reference in references]
        shapes.append((1, request.height // VAE_SCALE, request.width // VAE_SCALE))
        negative = resolve_guidance(request.guidance_scale, request.negative_prompt)
        prompts = [request.prompt] if negative is None else [request.prompt, negative]
        # The references' latents are encoded only for a references' chunk not found (once a
        # request: its second branch finds the first's chunk in ``made``).
        chains = [self._chain(prompt, references, lambda: self._condition_latents(references), made)
                  for prompt in prompts]
        layouts = [branch_layout(self._transformer, _slots(chain), shapes) for chain in chains]

        seed = request.seed if request.seed is not None else secrets.randbits(63)
        generator = torch.Generator(device="cpu").manual_seed(seed)
        # Only the noise: encoding references draws nothing from the generator (the mode, not a sample).
        noise, _ = self._pipe.prepare_latents(None, request.n, self._transformer.config.in_channels,
                                              request.height, request.width, self._dtype, self._device, generator)
        sigmas, timesteps = flow_schedule(request.num_inference_steps, noise.shape[1], self._shift,
                                          base_sigmas=self._sample_sigmas)
        prompt_tokens = sum(chunk.extra.slots.numel() for chunk in chains[0])
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
                prefixes=tuple(chains),
                prompt_tokens=prompt_tokens,
            )
            for i in range(request.n)
        ]

    def _reference(self, image: Image.Image) -> Reference:
        """A reference as the pipeline prepares it: RGBA, resized to about output_resolution² in its aspect."""
        rgba = image if image.mode == "RGBA" else image.convert("RGBA")
        width, height = reference_size(*rgba.size, self.output_resolution)
        resized = self._pipe.image_processor.resize(rgba, width=width, height=height)
        # The VLM sees it composited onto white, as the pipeline hands it to its processor.
        composited = Image.new("RGB", resized.size, (255, 255, 255))
        composited.paste(resized, mask=resized.getchannel("A"))
        digest = hashlib.sha256(f"{resized.size}".encode() + resized.tobytes()).hexdigest()
        return Reference(resized, composited, (1, height // VAE_SCALE, width // VAE_SCALE), digest)

    def _condition_latents(self, references: Sequence[Reference]) -> torch.Tensor:
        """The references' latents, packed and in order ``[tokens, C]``, as the pipeline's ``prepare_latents``."""
        pipe, packed = self._pipe, []
        for reference in references:
            _, height, width = reference.shape
            pixels = pipe.image_processor.preprocess(reference.image, width=width * VAE_SCALE,
                                                     height=height * VAE_SCALE).unsqueeze(2)
            encoded = pipe._encode_vae_image(pixels.to(self._device, self._dtype), None)
            packed.append(pipe._pack_latents(encoded, 1, encoded.shape[1], height, width)[0])
        return torch.cat(packed)

    def _chain(
        self, prompt: str, references: Sequence[Reference], latents: Callable[[], torch.Tensor],
        made: dict[Hashable, Chain],
    ) -> Chain:
        """The prefix chunks of one branch: from the cache where they are there, otherwise encoded.

        With references, two chunks: up to the last reference's ``<|vision_end|>`` (shared by both
        guidance branches and by every instruction on the same references), then the rest."""
        text = render_prompt(prompt, len(references))
        digests = tuple(reference.digest for reference in references)
        chain = self._lookup((text, digests), made)
        if chain is not None:
            return chain
        if not references:
            hidden, _ = self._vlm.encode(text)
            chain = (self._chunk(hidden[self._drop :], None, None),)
        else:
            end = vision_prefix_end(text)
            head = self._lookup((text[:end], digests), made)
            if head is None:
                hidden, vlm = self._vlm.encode(text, [r.vlm_image for r in references], prefix_end=end)
                assert vlm is not None
                head = (self._chunk(hidden[self._drop : vlm.num_tokens], vlm, latents()),)
                self._remember((text[:end], digests), head, made)
                tail = hidden[vlm.num_tokens :]
            else:
                tail = self._vlm.encode_suffix(text, head[-1].extra.vlm)
            chain = (*head, self._chunk(tail, None, None))
        self._remember((text, digests), chain, made)
        return chain

    def _chunk(self, hidden: torch.Tensor, vlm: VLMPrefix | None, latents: torch.Tensor | None) -> PrefixKV:
        """A chunk to fill from the VLM's states of its tokens; its image slots are the VLM prefix's image pads."""
        if vlm is None:
            slots = torch.zeros(hidden.shape[0], dtype=torch.bool)
        else:
            slots = torch.tensor(vlm.token_ids[self._drop :]) == self._image_token_id
        inputs = prefix_inputs(self._transformer, hidden, slots, latents)
        chunk = PrefixKV(inputs.shape[0], inputs, extra=ChunkTokens(slots, vlm))
        self._live.add(chunk)
        return chunk

    def _lookup(self, key: Hashable, made: dict[Hashable, Chain]) -> Chain | None:
        return made.get(key) or self._cache.get(key)

    def _remember(self, key: Hashable, chain: Chain, made: dict[Hashable, Chain]) -> None:
        made[key] = chain
        self._cache.put(key, chain)

    def cache_stats(self) -> dict[str, CacheStats]:
        """The prefix cache's counters, and the bytes of every chunk alive (the cache's and active requests')."""
        stats = self._cache.stats()
        live = sum(chunk.nbytes for chunk in list(self._live))
        return {"prefix": stats, "prefix_live": CacheStats(0, 0, live, len(self._live))}

    # -- step ----------------------------------------------------------------------------

    @torch.inference_mode()
    def step(self, states: list[QwenImage21FlowState]) -> None:
        for state in states:
            if state.done:
                raise ValueError(f"request {state.request_id} image {state.index} has finished its {state.num_steps} steps")
        rows, claimed = [], set()
        for state in states:
            # As the pipeline: the timestep in the latents' dtype, then scaled to [0, 1].
            timestep = state.timesteps[state.step_index].to(state.latents.dtype) / 1000
            for layout, chain in zip(state.layouts, state.prefixes, strict=True):
                rows.append(PackedRow(layout, chain, state.latents, timestep, _claim(chain, claimed)))
        outputs = iter(packed_forward(self._transformer, rows, self.attention_backend))
        guided = []
        for state in states:
            velocity = next(outputs)
            if len(state.layouts) > 1:
                negative = next(outputs)
                velocity = negative + state.guidance_scale * (velocity - negative)
            guided.append(velocity)
        euler_advance(states, guided)
        for row in rows:
            for chunk in row.filled:
                chunk.finish()
        self._cache.trim()  # the chunks just filled hold their keys and values now

    # -- preview and decode --------------------------------------------------------------

    def preview(self, states: list[QwenImage21FlowState]) -> list[Image.Image]:
        """The images the last step's velocities point at (``x0 = x_t - sigma * v``), in one batched decode."""
        cleans = previewable(states)
        return self._decode([(x, s.height, s.width) for x, s in zip(cleans, states, strict=True)])

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
