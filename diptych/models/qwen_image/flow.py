"""The denoising stages of Qwen-Image / Qwen-Image-Edit, run inside the flow worker.

Stages as in diffusers' ``QwenImagePipeline`` / ``QwenImageEditPipeline`` — encode prompt,
prepare latents, timesteps, denoise, decode — but split at step granularity, with every
per-request value in a :class:`QwenImageFlowState` so one runner serves interleaved requests.

Guidance rule (our API → diffusers' arguments). ``guidance_scale`` is diffusers'
``true_cfg_scale``. Classifier-free guidance runs exactly when ``guidance_scale > 1``; its
unconditional branch encodes ``negative_prompt``, or ``" "`` when the request has none (the
empty negative prompt Qwen-Image's own examples use). With ``guidance_scale <= 1`` there is
one branch and any ``negative_prompt`` is ignored. So a request equals the diffusers call
``true_cfg_scale=guidance_scale, negative_prompt=(negative_prompt if given else " ") if
guidance_scale > 1 else None``.

An edit checkpoint given no source image generates from text as ``QwenImagePipeline`` built
from the same components would (text template, no source latents).
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image

from diptych.engine.types import ImageRequest
from diptych.models.qwen_image import latents as lat
from diptych.models.qwen_image.components import QwenImageComponents, load_components
from diptych.models.qwen_image.prompt import PromptEmbedding, PromptEncoder
from diptych.models.qwen_image.schedule import euler_step, flow_schedule, predicted_clean, true_cfg
from diptych.models.qwen_image.source import DEFAULT_SOURCE_AREA, prepare_source

logger = logging.getLogger(__name__)

# The unconditional prompt when guidance runs and the request names no negative prompt.
EMPTY_NEGATIVE_PROMPT = " "


def resolve_guidance(guidance_scale: float, negative_prompt: str | None) -> str | None:
    """The negative prompt of the unconditional branch, or None when guidance does not run."""
    if guidance_scale <= 1:
        if negative_prompt is not None:
            logger.debug("negative_prompt ignored: guidance_scale %s <= 1", guidance_scale)
        return None
    return negative_prompt if negative_prompt is not None else EMPTY_NEGATIVE_PROMPT


@dataclass(eq=False)
class QwenImageFlowState:
    """One image of one request, between denoising steps."""

    request_id: str
    index: int  # which of the request's n images
    height: int
    width: int
    num_steps: int
    guidance_scale: float
    latents: torch.Tensor  # [1, patches, C*4], packed
    sigmas: torch.Tensor  # [num_steps + 1], ends at 0
    timesteps: torch.Tensor  # [num_steps], sigma * num_train_timesteps
    cond: PromptEmbedding
    uncond: PromptEmbedding | None  # None: no guidance
    # (frames, rows, cols) of each image in the transformer sequence: the target, then the source.
    img_shapes: tuple[tuple[int, int, int], ...]
    source_latents: torch.Tensor | None = None  # [1, source patches, C*4], edit only
    step_index: int = 0
    pred_clean: torch.Tensor | None = field(default=None, repr=False)  # x0 predicted at the last step

    @property
    def done(self) -> bool:
        return self.step_index >= self.num_steps

    @property
    def prompt_tokens(self) -> int:
        return self.cond.num_tokens


class QwenImageFlowRunner:
    """:class:`~diptych.models.base.FlowRunner` for Qwen-Image checkpoints in diffusers' layout."""

    def __init__(
        self,
        model_dir: Path,
        device: str = "cpu",
        *,
        dtype: torch.dtype = torch.float32,
        source_area: int = DEFAULT_SOURCE_AREA,
    ) -> None:
        self._parts: QwenImageComponents = load_components(Path(model_dir), device, dtype)
        self._prompts = PromptEncoder(
            self._parts.text_encoder, self._parts.tokenizer, self._parts.processor, self._parts.dtype
        )
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

    # -- prepare -------------------------------------------------------------------------

    @torch.inference_mode()
    def prepare(self, request: ImageRequest) -> list[QwenImageFlowState]:
        self._check(request)
        negative = resolve_guidance(request.guidance_scale, request.negative_prompt)
        source_latents, source_shape = None, None
        if request.is_edit:
            source = prepare_source(request.source_images[0], self._source_area)
            cond = self._prompts.encode_with_image(request.prompt, source)
            uncond = None if negative is None else self._prompts.encode_with_image(negative, source)
            source_latents = self._encode_source(source)
            source_shape = (1, source.height // self.size_multiple, source.width // self.size_multiple)
        else:
            cond = self._prompts.encode_text(request.prompt)
            uncond = None if negative is None else self._prompts.encode_text(negative)

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

    def _check(self, request: ImageRequest) -> None:
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

    def _initial_noise(self, request: ImageRequest) -> torch.Tensor:
        """All n images' noise in one draw from a CPU generator, as the pipeline draws it, then packed."""
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
        velocities = self._velocities(states)
        for state, velocity in zip(states, velocities, strict=True):
            i = state.step_index
            sigma, sigma_next = state.sigmas[i], state.sigmas[i + 1]
            state.pred_clean = predicted_clean(state.latents, velocity, sigma)
            state.latents = euler_step(state.latents, velocity, sigma, sigma_next)
            state.step_index = i + 1

    def _velocities(self, states: list[QwenImageFlowState]) -> list[torch.Tensor]:
        # One forward per branch per state for now; the flow worker's step batching will pack
        # these into one forward (block-diagonal attention) without changing this interface.
        velocities = []
        for state in states:
            cond = self._forward(state, state.cond)
            if state.uncond is not None:
                cond = true_cfg(cond, self._forward(state, state.uncond), state.guidance_scale)
            velocities.append(cond)
        return velocities

    def _forward(self, state: QwenImageFlowState, prompt: PromptEmbedding) -> torch.Tensor:
        hidden = state.latents
        if state.source_latents is not None:
            hidden = torch.cat([hidden, state.source_latents], dim=1)
        timestep = state.timesteps[state.step_index].expand(hidden.shape[0]).to(hidden.dtype)
        output = self._parts.transformer(
            hidden_states=hidden,
            timestep=timestep / 1000,
            encoder_hidden_states=prompt.embeds,
            encoder_hidden_states_mask=None,  # one unpadded prompt: every token is valid
            img_shapes=[list(state.img_shapes)],
            return_dict=False,
        )[0]
        # The source image's tokens ride along for attention only; keep the target's velocity.
        return output[:, : state.latents.shape[1]]

    # -- preview and decode --------------------------------------------------------------

    @torch.inference_mode()
    def preview(self, state: QwenImageFlowState) -> Image.Image:
        """The image the last step's velocity points at (``x0 = x_t - sigma * v``)."""
        if state.pred_clean is None:
            raise ValueError(f"request {state.request_id} image {state.index} has no step yet to preview")
        return self._decode_group([state.pred_clean], state.height, state.width)[0]

    @torch.inference_mode()
    def decode(self, states: list[QwenImageFlowState]) -> list[Image.Image]:
        """Final images, one VAE pass per distinct size; returned in the order of ``states``."""
        groups: dict[tuple[int, int], list[int]] = {}
        for position, state in enumerate(states):
            groups.setdefault((state.height, state.width), []).append(position)
        images: list[Image.Image | None] = [None] * len(states)
        for (height, width), positions in groups.items():
            decoded = self._decode_group([states[p].latents for p in positions], height, width)
            for position, image in zip(positions, decoded, strict=True):
                images[position] = image
        return [image for image in images if image is not None]

    def _decode_group(self, packed: list[torch.Tensor], height: int, width: int) -> list[Image.Image]:
        scale = self._parts.vae_scale_factor
        vae = self._parts.vae
        latents = lat.unpack(torch.cat(packed, dim=0), height // scale, width // scale).to(vae.dtype)
        latents = lat.denormalize(latents, vae.config.latents_mean, vae.config.latents_std)
        frames = vae.decode(latents, return_dict=False)[0][:, :, 0]
        return lat.pixels_to_pil(frames)
