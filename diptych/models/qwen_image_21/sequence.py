"""One guidance branch of a Qwen-Image 2.1 request laid out as the transformer's joint sequence.

The transformer sees ``[text, condition image 1, text, …, text, target image]``: the VLM's
sequence with each image slot widened to the 2x2 latent tokens it stands for, the condition
images' latents dropped into those positions, and the target image's tokens appended. Everything
before the target is the *prefix*: with ``causal_condition`` its tokens are modulated from
``t = 0``, so their keys and values do not depend on the step and are computed once.

:func:`layout_branch` derives what ``QwenImage21Transformer2DModel.forward`` derives for one
sample (rotary table, image blocks, the prefix's input embeddings), through the model's own
``pos_embed``, ``build_token_metadata``, ``txt_in`` and ``img_in``; the packed forward
(``packed.py``) then only has to slice it.
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

    def spec(self, with_prefix: bool) -> SequenceSpec:
        """The attention layout of this branch: its whole sequence queried, or only the target after a cached prefix."""
        return SequenceSpec(self.length, None if with_prefix else self.target_len, self.image_spans)


def slot_mask(image_slots: torch.Tensor, target_len: int) -> torch.Tensor:
    """The VLM's image-slot mask with the target's slots appended, as the pipeline's ``append_target_slots``."""
    return torch.cat([image_slots.bool(), image_slots.new_ones(target_len // TOKENS_PER_SLOT, dtype=torch.bool)])


def layout_branch(
    transformer: Any,
    text_embeds: torch.Tensor,
    image_slots: torch.Tensor,
    condition_latents: torch.Tensor | None,
    img_shapes: list[tuple[int, int, int]],
) -> tuple[BranchLayout, torch.Tensor]:
    """Lay out one branch: ``text_embeds`` [L, D_ctx] and ``image_slots`` [L] from the VLM,
    ``condition_latents`` [N_cond, C] (the references' packed latents, in order) and the
    ``(frames, rows, cols)`` of every image, the target's last.

    Returns the layout and the prefix's tokens as the first block receives them
    [prefix_len, inner_dim], needed only until the prefix's keys and values exist."""
    target_len = math.prod(img_shapes[-1])
    slots = slot_mask(image_slots.to(text_embeds.device), target_len)
    repeats = torch.where(slots, TOKENS_PER_SLOT, 1)
    image_mask = torch.repeat_interleave(slots, repeats)
    rotary = transformer.pos_embed(img_shapes, image_mask, device=text_embeds.device)
    image_ids, target_mask = transformer.build_token_metadata(image_mask, img_shapes)
    prefix_len = int((~target_mask).sum())

    text = transformer.txt_in(text_embeds[None])[0]
    prefix_input = text.repeat_interleave(repeats[: text.shape[0]], dim=0)
    if condition_latents is not None:
        prefix_input[image_mask[:prefix_len]] = transformer.img_in(condition_latents)
    layout = BranchLayout(prefix_len, target_len, _blocks(image_ids), rotary)
    return layout, prefix_input


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
