"""One transformer forward per image shape for the states of many requests, both guidance branches included.

**Grouped by shape, not packed.** States whose transformer sequences have the same image
layout (target size, and source size for edits) share one forward: each image
contributes a row per guidance branch (conditional, then unconditional), each row with
its own timestep. Prompts differ in length, so their embeddings are right-padded to the
longest in the group and the padding is masked out of attention
(``encoder_hidden_states_mask``); every valid token keeps the rotary position it has
alone. Different image layouts go to different forwards, because diffusers'
``QwenImageTransformer2DModel`` computes one rotary table per call. Why grouping rather
than packing every request into one block-diagonal sequence: see docs/architecture.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from diptych.models.qwen_image.schedule import true_cfg
from diptych.models.qwen_image.state import QwenImageFlowState


def group_by_layout(states: Sequence[QwenImageFlowState]) -> dict[tuple[tuple[int, int, int], ...], list[int]]:
    """Positions of ``states`` by the image layout of their transformer sequence, in first-seen order."""
    groups: dict[tuple[tuple[int, int, int], ...], list[int]] = {}
    for position, state in enumerate(states):
        groups.setdefault(state.img_shapes, []).append(position)
    return groups


def pad_prompts(embeds: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``[1, L_i, D]`` embeddings → ``[R, max L, D]`` right-padded with zeros, and the validity mask.

    The mask is None when every prompt has the same length: the unmasked call is the one
    a single request makes, so a lone request computes exactly what diffusers computes.
    """
    lengths = [e.shape[1] for e in embeds]
    longest = max(lengths)
    if all(length == longest for length in lengths):
        return torch.cat(list(embeds), dim=0), None
    padded = embeds[0].new_zeros(len(embeds), longest, embeds[0].shape[2])
    mask = torch.zeros(len(embeds), longest, dtype=torch.bool, device=padded.device)
    for row, (embed, length) in enumerate(zip(embeds, lengths, strict=True)):
        padded[row, :length] = embed[0]
        mask[row, :length] = True
    return padded, mask


def velocities(transformer: Any, states: Sequence[QwenImageFlowState]) -> list[torch.Tensor]:
    """The (guided) velocity of each state at its current step, in order."""
    out: list[torch.Tensor | None] = [None] * len(states)
    for positions in group_by_layout(states).values():
        group = [states[p] for p in positions]
        for position, velocity in zip(positions, _group_velocities(transformer, group), strict=True):
            out[position] = velocity
    return [v for v in out if v is not None]


def _group_velocities(transformer: Any, group: list[QwenImageFlowState]) -> list[torch.Tensor]:
    rows = [(state, prompt) for state in group for prompt in state.branches]
    hidden = torch.cat([_image_tokens(state) for state, _ in rows], dim=0)
    # Per-row timesteps, cast as the pipeline casts its expanded timestep, then scaled.
    timestep = torch.stack([state.timesteps[state.step_index] for state, _ in rows]).to(hidden.dtype)
    text, mask = pad_prompts([prompt.embeds for _, prompt in rows])
    output = transformer(
        hidden_states=hidden,
        timestep=timestep / 1000,
        encoder_hidden_states=text,
        encoder_hidden_states_mask=mask,
        img_shapes=[list(group[0].img_shapes)] * len(rows),
        return_dict=False,
    )[0]
    # The source image's tokens ride along for attention only; keep the target's velocity.
    target = output[:, : group[0].latents.shape[1]]
    result, row = [], 0
    for state in group:
        velocity = target[row : row + 1]
        if state.uncond is not None:
            velocity = true_cfg(velocity, target[row + 1 : row + 2], state.guidance_scale)
        result.append(velocity)
        row += len(state.branches)
    return result


def _image_tokens(state: QwenImageFlowState) -> torch.Tensor:
    if state.source_latents is None:
        return state.latents
    return torch.cat([state.latents, state.source_latents], dim=1)
