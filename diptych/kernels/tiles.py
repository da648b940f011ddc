"""Tile classification derived from the per-row key intervals.

For a tiling of the (query row, key row) plane into ``block_m × block_n`` tiles, each
tile is *skipped* (no visible pair), *full* (every pair visible, so a kernel needs no
mask arithmetic) or *partial*. This is FlexAttention's block mask, computed exactly from
the intervals in memory proportional to the tile grid, never the L×L plane:

* a row's interval ``[s, e)`` touches the key tiles ``s // bn .. (e - 1) // bn``, so the
  tiles a query tile touches are a union of ranges (a difference array per query tile);
* a key tile ``[n0, n0 + bn)`` is full for a query tile iff every row covers it, i.e.
  ``max(s) <= n0`` and ``n0 + bn <= min(e)`` over the tile's rows.

Query-tile rows past the layout's ``num_q_rows`` do not exist and are ignored (their
outputs are never stored); padding rows inside it have empty intervals, which prevents
full tiles in their query tile, as it must.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from diptych.kernels.layout import MaskLayout

SKIPPED, PARTIAL, FULL = 0, 1, 2


@dataclass(frozen=True)
class TileMap:
    """Classes of all tiles plus per-query-tile lists: partial tiles first, then full.

    ``tile_idx[tile_ptr[m] : tile_ptr[m] + num_partial[m]]`` are the partial key tiles of
    query tile ``m`` and ``tile_idx[tile_ptr[m] + num_partial[m] : tile_ptr[m + 1]]`` its
    full ones, in increasing key order within each kind.
    """

    block_m: int
    block_n: int
    classes: torch.Tensor  # int8 [num_q_tiles, num_k_tiles]
    tile_ptr: torch.Tensor  # int32 [num_q_tiles + 1]
    tile_idx: torch.Tensor  # int32 [computed tiles]
    num_partial: torch.Tensor  # int32 [num_q_tiles]

    @property
    def num_q_tiles(self) -> int:
        return self.classes.shape[0]

    @property
    def num_k_tiles(self) -> int:
        return self.classes.shape[1]

    def fraction(self, kind: int) -> float:
        """Share of all tiles of the grid that have class ``kind``."""
        return float((self.classes == kind).sum()) / max(self.classes.numel(), 1)


def classify_tiles(
    kv_start: torch.Tensor, kv_end: torch.Tensor, num_k_rows: int, block_m: int, block_n: int
) -> TileMap:
    """Classify the tiles of a ``len(kv_start) × num_k_rows`` plane; intervals are int tensors."""
    device = kv_start.device
    rows = kv_start.shape[0]
    num_q_tiles = -(-rows // block_m)
    num_k_tiles = -(-num_k_rows // block_n)
    pad = num_q_tiles * block_m - rows
    start = kv_start.long()
    end = kv_end.long()

    # Touched tiles: +1 at each row's first key tile, -1 after its last, prefix-summed.
    nonempty = end > start
    q_tile = torch.arange(rows, device=device) // block_m
    first = start // block_n
    after = (end - 1) // block_n + 1
    diff = torch.zeros(num_q_tiles, num_k_tiles + 1, dtype=torch.int32, device=device)
    ones = nonempty.to(torch.int32)
    flat = diff.view(-1)
    flat.scatter_add_(0, (q_tile * (num_k_tiles + 1) + first)[nonempty], ones[nonempty])
    flat.scatter_add_(0, (q_tile * (num_k_tiles + 1) + after)[nonempty], -ones[nonempty])
    touched = diff.cumsum(dim=1)[:, :num_k_tiles] > 0

    # Full tiles: covered by every existing row of the query tile.
    big = torch.iinfo(torch.int64).max
    max_start = torch.cat([start, start.new_zeros(pad)]).view(num_q_tiles, block_m).amax(dim=1)
    min_end = torch.cat([end, end.new_full((pad,), big)]).view(num_q_tiles, block_m).amin(dim=1)
    tile_lo = torch.arange(num_k_tiles, device=device) * block_n
    full = (tile_lo[None] >= max_start[:, None]) & (tile_lo[None] + block_n <= min_end[:, None])

    classes = torch.where(full, FULL, torch.where(touched, PARTIAL, SKIPPED)).to(torch.int8)
    return _with_lists(classes, block_m, block_n)


def _with_lists(classes: torch.Tensor, block_m: int, block_n: int) -> TileMap:
    num_q_tiles, num_k_tiles = classes.shape
    computed = classes != SKIPPED
    # Sort computed tiles by (query tile, full after partial, key tile).
    m_idx, n_idx = computed.nonzero(as_tuple=True)
    is_full = (classes[m_idx, n_idx] == FULL).long()
    order = torch.argsort((m_idx * 2 + is_full) * num_k_tiles + n_idx)
    counts = computed.sum(dim=1)
    tile_ptr = torch.zeros(num_q_tiles + 1, dtype=torch.int32, device=classes.device)
    tile_ptr[1:] = counts.cumsum(0)
    return TileMap(
        block_m=block_m,
        block_n=block_n,
        classes=classes,
        tile_ptr=tile_ptr,
        tile_idx=n_idx[order].to(torch.int32),
        num_partial=(classes == PARTIAL).sum(dim=1).to(torch.int32),
    )


def layout_tiles(layout: MaskLayout, num_k_rows: int, block_m: int, block_n: int) -> TileMap:
    """The layout's tile map, built on first use and then reused by every layer."""
    key = ("tiles", num_k_rows, block_m, block_n)
    if key not in layout.cache:
        layout.cache[key] = classify_tiles(layout.kv_start, layout.kv_end, num_k_rows, block_m, block_n)
    return layout.cache[key]
