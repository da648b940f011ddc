"""Compiled FlexAttention over the packed batch, with its block mask taken from our tiles.

The whole packed batch is one FlexAttention "sequence" of ``rows`` queries and ``K``
keys. The block mask is built with ``BlockMask.from_kv_blocks`` from the tile map (so
``create_block_mask`` never evaluates the mask over the L×L plane), and ``mask_mod``
only runs inside partial blocks, where it checks the row's key interval.

On this CPU the benchmark found it slower than segment-wise SDPA (see
``diptych bench attention --flex``), so "auto" does not pick it; compilation costs tens
of seconds per new shape.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from torch.nn.attention.flex_attention import BlockMask, flex_attention

from diptych.kernels.layout import MaskLayout
from diptych.kernels.tiles import FULL, PARTIAL, TileMap, layout_tiles

# FlexAttention's CPU and GPU templates are tuned for 128 × 128 blocks.
BLOCK = 128


def flex_attention_packed(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: MaskLayout, scale: float
) -> torch.Tensor:
    """q [rows, Hq, D], k/v [>= total_k, Hkv, D] (packed varlen) → [rows, Hq, D]."""
    block_mask = _block_mask(layout, k.shape[0], q.device)
    out = _compiled()(
        q.transpose(0, 1).unsqueeze(0),
        k.transpose(0, 1).unsqueeze(0),
        v.transpose(0, 1).unsqueeze(0),
        block_mask=block_mask,
        scale=scale,
        enable_gqa=q.shape[1] != k.shape[1],
    )
    return out[0].transpose(0, 1)


@functools.cache
def _compiled() -> Any:
    return torch.compile(flex_attention)


def _block_mask(layout: MaskLayout, num_k_rows: int, device: torch.device) -> BlockMask:
    key = ("flex-block-mask", num_k_rows, str(device))
    if key not in layout.cache:
        tiles = layout_tiles(layout, num_k_rows, BLOCK, BLOCK)
        kv_start = layout.kv_start.to(device)
        kv_end = layout.kv_end.to(device)

        def mask_mod(batch: Any, head: Any, q_idx: Any, kv_idx: Any) -> Any:
            return (kv_idx >= kv_start[q_idx]) & (kv_idx < kv_end[q_idx])

        partial_count, partial_idx = _padded_lists(tiles, PARTIAL)
        full_count, full_idx = _padded_lists(tiles, FULL)
        layout.cache[key] = BlockMask.from_kv_blocks(
            partial_count.to(device), partial_idx.to(device), full_count.to(device), full_idx.to(device),
            BLOCK_SIZE=BLOCK, mask_mod=mask_mod, seq_lengths=(layout.num_q_rows, num_k_rows),
        )
    return layout.cache[key]


def _padded_lists(tiles: TileMap, kind: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per query tile, how many key tiles have class ``kind`` and their indices first (in
    key order), as FlexAttention's [B=1, H=1, q tiles] counts and [.., k tiles] indices."""
    chosen = tiles.classes == kind
    # A stable sort puts the chosen tiles first, in key order.
    order = torch.argsort((~chosen).to(torch.int8), dim=1, stable=True)
    counts = chosen.sum(dim=1)
    return counts[None, None].to(torch.int32), order[None, None].to(torch.int32)
