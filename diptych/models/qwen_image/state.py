"""Per-image denoising state of a Qwen-Image request, and the guidance rule that fills it.

Guidance rule (our API → diffusers' arguments). ``guidance_scale`` is diffusers'
``true_cfg_scale``. Classifier-free guidance runs exactly when ``guidance_scale > 1``; its
unconditional branch encodes ``negative_prompt``, or ``" "`` when the request has none (the
empty negative prompt Qwen-Image's own examples use). With ``guidance_scale <= 1`` there is
one branch and any ``negative_prompt`` is ignored. So a request equals the diffusers call
``true_cfg_scale=guidance_scale, negative_prompt=(negative_prompt if given else " ") if
guidance_scale > 1 else None``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch

from diptych.models.qwen_image.prompt import PromptEmbedding

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

    @property
    def branches(self) -> tuple[PromptEmbedding, ...]:
        """The prompt of each transformer row this image needs per step: conditional, then unconditional."""
        return (self.cond,) if self.uncond is None else (self.cond, self.uncond)
