"""Block-diagonal attention over packed variable-length sequences, behind one dispatch function.

When requests of different lengths are packed into one token sequence (one forward for
all of them), each token must attend only to the tokens of its own request, and within a
request attention is full (a diffusion transformer's joint text–image attention). The
mask is block-diagonal; no L×L mask is ever built.

    out = block_diagonal_attention(q, k, v, q_seqlens=[40, 72, 72])  # q, k, v [184, H, D]

Backends:

* ``"xformers"``: ``memory_efficient_attention`` with xformers' ``BlockDiagonalMask``, one
  kernel over the whole pack. Chosen only for CUDA tensors: xformers has no CPU kernels.
* ``"sdpa"``: PyTorch SDPA per sequence, with sequences of equal lengths stacked into one
  call (the two guidance branches of a request, same-size requests). The CPU path, and
  the CUDA path when xformers is not installed.
* ``"reference"``: dense masked attention in float64, for tests.

Flow runners that group requests by shape do not pack (see docs/architecture.md); this is
the kernel that runners which pack call.
"""

from __future__ import annotations

import importlib.util
import logging
import math
from collections.abc import Callable, Sequence
from typing import Literal

import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)

Backend = Literal["xformers", "sdpa", "reference"]
BACKENDS: tuple[Backend, ...] = ("xformers", "sdpa", "reference")


def xformers_importable() -> bool:
    return importlib.util.find_spec("xformers") is not None


def select_block_diagonal_backend(
    device: torch.device | str, *, xformers_available: Callable[[], bool] = xformers_importable
) -> Backend:
    """``"xformers"`` for CUDA tensors when xformers is installed, else ``"sdpa"``."""
    if torch.device(device).type == "cuda" and xformers_available():
        return "xformers"
    return "sdpa"


def block_diagonal_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    q_seqlens: Sequence[int],
    kv_seqlens: Sequence[int] | None = None,
    *,
    scale: float | None = None,
    backend: Backend | Literal["auto"] = "auto",
) -> torch.Tensor:
    """Attention of each packed query sequence over its own key sequence.

    ``q`` is [sum(q_seqlens), Hq, D]; ``k`` and ``v`` are [sum(kv_seqlens), Hkv, D] with
    ``Hq % Hkv == 0`` (``kv_seqlens`` defaults to ``q_seqlens``: self-attention). Sequence
    ``i`` of the queries attends to sequence ``i`` of the keys only. Returns [sum(q_seqlens), Hq, D].
    """
    kv_seqlens = q_seqlens if kv_seqlens is None else kv_seqlens
    _check(q, k, v, q_seqlens, kv_seqlens)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    chosen = select_block_diagonal_backend(q.device) if backend == "auto" else backend
    if chosen == "xformers":
        if q.device.type != "cuda":
            raise ValueError(f"backend 'xformers' needs CUDA tensors (xformers has no CPU kernels), not {q.device}")
        return _xformers(q, k, v, q_seqlens, kv_seqlens, scale)
    if chosen == "sdpa":
        return _sdpa_per_sequence(q, k, v, q_seqlens, kv_seqlens, scale)
    if chosen == "reference":
        return reference_block_diagonal(q, k, v, q_seqlens, kv_seqlens, scale)
    raise ValueError(f"unknown block-diagonal attention backend {chosen!r}; known: {list(BACKENDS)} or 'auto'")


def _check(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_seqlens: Sequence[int], kv_seqlens: Sequence[int]) -> None:
    if q.dim() != 3 or k.shape != v.shape or k.dim() != 3:
        raise ValueError(f"q, k, v must be [tokens, heads, head_dim] with k, v alike; got {q.shape}, {k.shape}, {v.shape}")
    if len(q_seqlens) != len(kv_seqlens):
        raise ValueError(f"{len(q_seqlens)} query sequences but {len(kv_seqlens)} key sequences")
    if any(n < 1 for n in q_seqlens) or any(n < 1 for n in kv_seqlens):
        raise ValueError(f"sequence lengths must be >= 1: q {list(q_seqlens)}, kv {list(kv_seqlens)}")
    if sum(q_seqlens) != q.shape[0] or sum(kv_seqlens) != k.shape[0]:
        raise ValueError(
            f"sequence lengths sum to {sum(q_seqlens)} queries and {sum(kv_seqlens)} keys, "
            f"but q has {q.shape[0]} rows and k {k.shape[0]}"
        )
    if q.shape[2] != k.shape[2] or q.shape[1] % k.shape[1]:
        raise ValueError(f"head_dim must match and query heads divide by KV heads; got q {q.shape}, k {k.shape}")


def _sdpa_per_sequence(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_seqlens: Sequence[int], kv_seqlens: Sequence[int], scale: float
) -> torch.Tensor:
    qs, ks, vs = q.split(list(q_seqlens)), k.split(list(kv_seqlens)), v.split(list(kv_seqlens))
    # Sequences of equal (query, key) lengths go through one batched call.
    groups: dict[tuple[int, int], list[int]] = {}
    for index, lengths in enumerate(zip(q_seqlens, kv_seqlens, strict=True)):
        groups.setdefault(lengths, []).append(index)
    out: list[torch.Tensor | None] = [None] * len(qs)
    gqa = q.shape[1] != k.shape[1]
    for indices in groups.values():
        # [B, L, H, D] → [B, H, L, D], SDPA's layout.
        batch_q = torch.stack([qs[i] for i in indices]).transpose(1, 2)
        batch_k = torch.stack([ks[i] for i in indices]).transpose(1, 2)
        batch_v = torch.stack([vs[i] for i in indices]).transpose(1, 2)
        result = F.scaled_dot_product_attention(batch_q, batch_k, batch_v, scale=scale, enable_gqa=gqa)
        for row, index in enumerate(indices):
            out[index] = result[row].transpose(0, 1)
    return torch.cat([o for o in out if o is not None])


def _xformers(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_seqlens: Sequence[int], kv_seqlens: Sequence[int], scale: float
) -> torch.Tensor:
    from xformers.ops import fmha

    if q.shape[1] != k.shape[1]:
        # memory_efficient_attention takes grouped heads only in its 5-d layout; repeat KV heads instead.
        repeat = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(repeat, dim=1), v.repeat_interleave(repeat, dim=1)
    bias = fmha.attn_bias.BlockDiagonalMask.from_seqlens(q_seqlen=list(q_seqlens), kv_seqlen=list(kv_seqlens))
    # xformers' BMHK layout is ours with a batch of one.
    return fmha.memory_efficient_attention(q[None], k[None], v[None], attn_bias=bias, scale=scale)[0]


def reference_block_diagonal(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    q_seqlens: Sequence[int],
    kv_seqlens: Sequence[int] | None = None,
    scale: float | None = None,
) -> torch.Tensor:
    """Dense attention under an explicit block-diagonal mask, in float64: what every backend must equal."""
    kv_seqlens = q_seqlens if kv_seqlens is None else kv_seqlens
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    q_ids = torch.repeat_interleave(torch.arange(len(q_seqlens)), torch.tensor(list(q_seqlens)))
    kv_ids = torch.repeat_interleave(torch.arange(len(kv_seqlens)), torch.tensor(list(kv_seqlens)))
    allowed = (q_ids[:, None] == kv_ids[None, :]).to(q.device)
    repeat = q.shape[1] // k.shape[1]
    k64 = k.double().repeat_interleave(repeat, dim=1)
    v64 = v.double().repeat_interleave(repeat, dim=1)
    scores = torch.einsum("qhd,khd->hqk", q.double(), k64) * scale
    scores = scores.masked_fill(~allowed, float("-inf"))
    return torch.einsum("hqk,khd->qhd", scores.softmax(dim=-1), v64).to(q.dtype)
