"""CPU path: one ``scaled_dot_product_attention`` call per segment of the layout.

An image block needs no mask at all: every one of its rows sees the same keys, up to the
block's end. A text run whose keys start with it is a square causal problem (SDPA's
``is_causal``). Only a text run that follows a prefix (an image, an earlier text run, a
cached prefix) needs a mask, because SDPA aligns ``is_causal`` top-left and we need
bottom-right; that mask is built per call for at most ``_MASK_ROWS`` rows at a time, so
no tensor of L×L size ever exists, and the work wasted on masked pairs stays below
half a ``_MASK_ROWS``-square per run.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from diptych.kernels.layout import MaskLayout, Segment

# Rows per masked SDPA call. Text runs after an image are short (tens of tokens), so this
# only splits long runs over a cached prefix; 256 keeps each mask below 256 × L.
_MASK_ROWS = 256


def sdpa_segments_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: MaskLayout, scale: float
) -> torch.Tensor:
    """q [rows, Hq, D], k/v [>= total_k, Hkv, D] (packed varlen) → [rows, Hq, D]."""
    out = torch.empty_like(q)
    if layout.num_q_rows > layout.total_q:
        out[layout.total_q :] = 0  # padding rows see no key
    for seg in layout.segments:
        _segment(q, k, v, seg, scale, out[seg.q_start : seg.q_end])
    return out


def segment_work(seg: Segment) -> int:
    """Query–key products this path computes for a segment (the benchmark's cost model)."""
    n, width = seg.num_queries, seg.k_end - seg.k_start
    if not seg.causal or n == 1:
        return n * width
    if seg.prefix == 0:
        return n * (n + 1) // 2
    # Masked chunks: each chunk computes its rows against all keys up to its last row.
    work = 0
    for lo in range(0, n, _MASK_ROWS):
        hi = min(lo + _MASK_ROWS, n)
        work += (hi - lo) * (seg.prefix + hi)
    return work


def _segment(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, seg: Segment, scale: float, dest: torch.Tensor
) -> None:
    """Attend one segment's rows and write the result into ``dest`` (their rows of the output)."""
    rows = q[seg.q_start : seg.q_end]
    keys = k[seg.k_start : seg.k_end]
    values = v[seg.k_start : seg.k_end]
    if not seg.causal or seg.num_queries == 1:
        _sdpa(rows, keys, values, scale, dest)
    elif seg.prefix == 0:
        _sdpa(rows, keys, values, scale, dest, is_causal=True)
    else:
        _causal_after_prefix(rows, keys, values, seg.prefix, scale, dest)


def _sdpa(
    rows: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    scale: float,
    dest: torch.Tensor,
    *,
    attn_mask: torch.Tensor | None = None,
    is_causal: bool = False,
) -> None:
    """One SDPA call on [T, H, D] slices, written into ``dest``. The [1, H, T, D] inputs are
    views (SDPA's CPU kernel takes strides, and handles grouped heads without copying K
    and V); its output is laid out [T, H, D] in memory, so the copy into ``dest`` is flat."""
    attended = F.scaled_dot_product_attention(
        rows.transpose(0, 1).unsqueeze(0),
        keys.transpose(0, 1).unsqueeze(0),
        values.transpose(0, 1).unsqueeze(0),
        attn_mask=attn_mask,
        is_causal=is_causal,
        scale=scale,
        enable_gqa=rows.shape[1] != keys.shape[1],
    )
    dest.copy_(attended[0].transpose(0, 1))


def _causal_after_prefix(
    rows: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, prefix: int, scale: float, dest: torch.Tensor
) -> None:
    """Bottom-right causal: row i sees keys [0, prefix + i]. Masked, in chunks of rows.

    Chunk [lo, hi) sees keys [0, prefix + lo) entirely and a causal square after them, so
    its mask is zero but for a triangle in its last ``hi - lo`` columns. One buffer,
    allocated once, serves every chunk as a strided view: each chunk clears the previous
    chunk's square and writes its own triangle, instead of filling a new rows × L mask.
    """
    n = rows.shape[0]
    chunk = min(n, _MASK_ROWS)
    # Additive mask in the input dtype: SDPA would otherwise convert a boolean one.
    buffer = torch.zeros((chunk, prefix + n), dtype=rows.dtype, device=rows.device)
    above_diagonal = torch.ones((chunk, chunk), dtype=torch.bool, device=rows.device).triu(1)
    for lo in range(0, n, chunk):
        hi = min(lo + chunk, n)
        size = hi - lo
        if lo:
            buffer[:, prefix + lo - chunk : prefix + lo] = 0
        square = buffer[:size, prefix + lo : prefix + hi]
        square.masked_fill_(above_diagonal[:size, :size], float("-inf"))
        _sdpa(
            rows[lo:hi], keys[: prefix + hi], values[: prefix + hi], scale, dest[lo:hi],
            attn_mask=buffer[:size, : prefix + hi],
        )
