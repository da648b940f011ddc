"""One guidance branch of a Qwen-Image 2.1 request laid out as the transformer's joint sequence.

The transformer sees ``[text, condition image 1, text, …, text, target image]``: the VLM's
sequence with each image slot widened to the 2x2 latent tokens it stands for, the condition
images' latents dropped into those positions, and the target image's tokens appended. Everything
before the target is the *prefix*: with ``causal_condition`` its tokens are modulated from
``t = 0``, so their keys and values do not depend on the step and are computed once.

The functions here derive what ``QwenImage21Transformer2DModel.forward`` derives for one
sample (rotary table, image blocks, the prefix's input embeddings), through the model's own
``pos_embed``, ``build_token_metadata``, ``txt_in`` and ``img_in``; the packed forward
(``packed.py``) then only has to slice it. :func:`branch_layout` needs only the token
structure; :func:`prefix_inputs` the VLM's states for the stretch of the prefix that has to
be run (a stored stretch needs neither).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from diptych.kernels import SequenceSpec

# Each image slot of the VLM stands for a 2x2 group of latent tokens.
TOKENS_PER_SLOT = 4


@dataclass(frozen=True, eq=False)
class BranchLayout:
    """A branch's joint sequence: its prefix, its target block and where the image blocks lie."""

    prefix_len: int
    target_len: int
    # (start, end) of every image block in joint positions, the target's last.
    image_spans: tuple[tuple[int, int], ...]
    rotary: torch.Tensor  # [prefix_len + target_len, head_dim / 2], complex

    @property
    def length(self) -> int:
        return self.prefix_len + self.target_len

    def spec(self, stored: int) -> SequenceSpec:
        """The attention layout of this branch when its first ``stored`` tokens' keys are stored, the rest queried."""
        return SequenceSpec(self.length, None if stored == 0 else self.length - stored, self.image_spans)


def slot_mask(image_slots: torch.Tensor, target_len: int) -> torch.Tensor:
    """The VLM's image-slot mask with the target's slots appended, as the pipeline's ``append_target_slots``."""
    return torch.cat([image_slots.bool(), image_slots.new_ones(target_len // TOKENS_PER_SLOT, dtype=torch.bool)])


def branch_layout(transformer: Any, image_slots: torch.Tensor, img_shapes: list[tuple[int, int, int]]) -> BranchLayout:
    """Lay out one branch from the VLM's image-slot mask [L] (after the dropped system turn) and
    the ``(frames, rows, cols)`` of every image, the target's last."""
    target_len = math.prod(img_shapes[-1])
    slots = slot_mask(image_slots, target_len)
    image_mask = torch.repeat_interleave(slots, torch.where(slots, TOKENS_PER_SLOT, 1))
    device = next(transformer.parameters()).device
    rotary = transformer.pos_embed(img_shapes, image_mask.to(device), device=device)
    image_ids, target_mask = transformer.build_token_metadata(image_mask, img_shapes)
    return BranchLayout(int((~target_mask).sum()), target_len, _blocks(image_ids), rotary)


def prefix_inputs(
    transformer: Any, text_embeds: torch.Tensor, image_slots: torch.Tensor, condition_latents: torch.Tensor | None
) -> torch.Tensor:
    """A stretch of the prefix as the first block receives it: the VLM's states ``text_embeds``
    [l, D_ctx] through ``txt_in``, each image slot widened to its 2x2 latent tokens and replaced
    by ``condition_latents`` [N, C] through ``img_in`` (all the stretch's slots, in order)."""
    repeats = torch.where(image_slots.to(text_embeds.device), TOKENS_PER_SLOT, 1)
    inputs = transformer.txt_in(text_embeds[None])[0].repeat_interleave(repeats, dim=0)
    if condition_latents is not None:
        inputs[torch.repeat_interleave(repeats > 1, repeats)] = transformer.img_in(condition_latents)
    return inputs


def _blocks(image_ids: torch.Tensor) -> tuple[tuple[int, int], ...]:
    """Runs of equal non-negative ids: the image blocks, each bidirectional within itself."""
    ids = image_ids.tolist()
    spans: list[tuple[int, int]] = []
    start = 0
    for position in range(1, len(ids) + 1):
        if position == len(ids) or ids[position] != ids[start]:
            if ids[start] >= 0:
                spans.append((start, position))
            start = position
    return tuple(spans)
