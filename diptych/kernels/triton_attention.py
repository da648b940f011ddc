"""GPU path: a Triton flash-attention forward kernel driven by the tile map.

One program per (query tile, query head). It walks only the key tiles its query tile
touches: first the *partial* ones, where each score is masked against the row's key
interval, then the *full* ones, with no mask arithmetic at all. Skipped tiles are never
loaded. Grouped-query heads read KV head ``h // group``. Rows that see nothing (padding)
write zeros.

Triton's interpreter (``TRITON_INTERPRET=1``, used by the tests on CPU) is chosen when
Triton is imported: its own library functions (``tl.sum``, ``tl.max``) are wrapped then,
and a kernel must be wrapped the same way to call them. So the kernel is wrapped on first
use, in whichever mode Triton itself is in, not by a decorator that reads the
environment when this module happens to be imported.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import torch
import triton
import triton.language as tl

from diptych.kernels.layout import MaskLayout
from diptych.kernels.tiles import layout_tiles

BLOCK_M = 64
BLOCK_N = 64


def interpreter_active() -> bool:
    """Whether Triton was imported in interpreter mode (``TRITON_INTERPRET=1`` set before)."""
    return not isinstance(tl.sum, triton.runtime.JITFunction)


def triton_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: MaskLayout, scale: float
) -> torch.Tensor:
    """q [rows, Hq, D], k/v [>= total_k, Hkv, D] (packed varlen) → [rows, Hq, D]."""
    rows, heads, head_dim = q.shape
    tiles = layout_tiles(layout, k.shape[0], BLOCK_M, BLOCK_N)
    metadata = _on_device(layout, tiles, q.device)
    out = torch.empty_like(q)
    kernel = _kernel(interpret=interpreter_active())
    kernel[(tiles.num_q_tiles, heads)](
        q, k, v, out, *metadata,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1), out.stride(0), out.stride(1),
        rows, k.shape[0], scale * math.log2(math.e),
        GROUP=heads // k.shape[1], HEAD_DIM=head_dim, BLOCK_D=max(16, triton.next_power_of_2(head_dim)),
        BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N,
    )
    return out


def _on_device(layout: MaskLayout, tiles: Any, device: torch.device) -> tuple[torch.Tensor, ...]:
    """Interval and tile-list tensors on the kernel's device, moved once per batch."""
    key = ("triton-metadata", tiles.block_m, tiles.block_n, str(device))
    if key not in layout.cache:
        layout.cache[key] = tuple(
            t.to(device=device, dtype=torch.int32).contiguous()
            for t in (layout.kv_start, layout.kv_end, tiles.tile_ptr, tiles.tile_idx, tiles.num_partial)
        )
    return layout.cache[key]


@functools.cache
def _kernel(interpret: bool) -> Any:
    with triton.knobs.runtime.scope():
        triton.knobs.runtime.interpret = interpret
        return triton.jit(_interval_attention_fwd)


def _interval_attention_fwd(
    Q, K, V, O, KV_START, KV_END, TILE_PTR, TILE_IDX, NUM_PARTIAL,  # noqa: N803 - Triton pointer style
    stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_ot, stride_oh,
    num_q_rows, num_k_rows, qk_scale,  # qk_scale = softmax scale × log2(e): exp2 below
    GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,  # noqa: N803
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,  # noqa: N803
):
    q_tile = tl.program_id(0)
    head = tl.program_id(1)
    kv_head = head // GROUP
    rows = q_tile * BLOCK_M + tl.arange(0, BLOCK_M)
    dims = tl.arange(0, BLOCK_D)
    row_ok = rows < num_q_rows
    dim_ok = dims < HEAD_DIM
    # 64-bit row offsets: rows × stride exceeds 2**31 for long batches with many heads.
    row_off = rows.to(tl.int64)[:, None] * stride_qt

    q = tl.load(Q + row_off + head * stride_qh + dims[None, :],
                mask=row_ok[:, None] & dim_ok[None, :], other=0.0)
    lo = tl.load(KV_START + rows, mask=row_ok, other=0)
    hi = tl.load(KV_END + rows, mask=row_ok, other=0)

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)

    first = tl.load(TILE_PTR + q_tile)
    last = tl.load(TILE_PTR + q_tile + 1)
    first_full = first + tl.load(NUM_PARTIAL + q_tile)

    # Partial tiles: mask each score against its row's interval. A row may see nothing in
    # a tile (or at all), so the running max can stay -inf; subtract 0 instead, or
    # exp2(-inf - -inf) would be NaN.
    for t in range(first, first_full):
        cols = tl.load(TILE_IDX + t) * BLOCK_N + tl.arange(0, BLOCK_N)
        kv_ok = (cols < num_k_rows)[:, None] & dim_ok[None, :]
        col_off = cols.to(tl.int64)[:, None]
        k = tl.load(K + col_off * stride_kt + kv_head * stride_kh + dims[None, :], mask=kv_ok, other=0.0)
        v = tl.load(V + col_off * stride_vt + kv_head * stride_vh + dims[None, :], mask=kv_ok, other=0.0)
        s = tl.dot(q, tl.trans(k)) * qk_scale
        visible = (cols[None, :] >= lo[:, None]) & (cols[None, :] < hi[:, None])
        s = tl.where(visible, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.math.exp2(m_i - m_safe)
        p = tl.math.exp2(s - m_safe[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
        m_i = m_new

    # Full tiles: every pair visible and every key row in range, by construction of the
    # tile map, so neither the interval mask nor the -inf guard is needed.
    for t in range(first_full, last):
        cols = tl.load(TILE_IDX + t) * BLOCK_N + tl.arange(0, BLOCK_N)
        col_off = cols.to(tl.int64)[:, None]
        k = tl.load(K + col_off * stride_kt + kv_head * stride_kh + dims[None, :], mask=dim_ok[None, :], other=0.0)
        v = tl.load(V + col_off * stride_vt + kv_head * stride_vh + dims[None, :], mask=dim_ok[None, :], other=0.0)
        s = tl.dot(q, tl.trans(k)) * qk_scale
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.math.exp2(m_i - m_new)
        p = tl.math.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
        m_i = m_new

    # Rows that saw no key have l_i == 0 and acc == 0: divide by 1 to write zeros.
    out = acc / tl.where(l_i > 0.0, l_i, 1.0)[:, None]
    tl.store(O + rows.to(tl.int64)[:, None] * stride_ot + head * stride_oh + dims[None, :],
             out.to(O.dtype.element_ty), mask=row_ok[:, None] & dim_ok[None, :])
