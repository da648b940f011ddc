"""One attention entry point over a registry of implementations that declare constraints.

Each backend states the devices, dtypes and head dimensions it accepts and, per device,
its rank for ``backend="auto"`` (lower is preferred; a device without a rank never gets
the backend automatically: FlexAttention is slower than segment-wise SDPA on CPU, see
``diptych bench attention --flex``).
Implementations are imported on first use, so that importing ``diptych.kernels`` does not
import Triton. The brute-force reference is always registered and accepts everything,
so "auto" always finds an implementation.
"""

from __future__ import annotations

import importlib
import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

import torch

from diptych.kernels.layout import MaskLayout

logger = logging.getLogger(__name__)

AttentionFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, MaskLayout, float], torch.Tensor]

_FLOATS = frozenset({torch.float16, torch.bfloat16, torch.float32})


@dataclass(frozen=True)
class AttentionBackend:
    """An implementation and what it accepts. ``target`` is ``"module:function"``."""

    name: str
    target: str
    devices: frozenset[str]
    dtypes: frozenset[torch.dtype]
    head_dims: tuple[int, int] = (1, 1 << 16)  # inclusive range
    auto_rank: Mapping[str, int] = field(default_factory=dict)  # device type → rank for "auto"
    # Extra run-time condition; returns why the inputs are refused, or None.
    precondition: Callable[[torch.Tensor], str | None] | None = None

    def refusal(self, q: torch.Tensor) -> str | None:
        """Why this backend cannot take ``q`` (and its k, v), or None if it can."""
        if q.device.type not in self.devices:
            return f"backend {self.name!r} runs on {sorted(self.devices)}, not on device {q.device.type!r}"
        if q.dtype not in self.dtypes:
            return f"backend {self.name!r} supports dtypes {sorted(map(str, self.dtypes))}, not {q.dtype}"
        lo, hi = self.head_dims
        if not lo <= q.shape[-1] <= hi:
            return f"backend {self.name!r} supports head dims {lo}..{hi}, not {q.shape[-1]}"
        return self.precondition(q) if self.precondition else None

    def load(self) -> AttentionFn:
        module_name, _, attr = self.target.partition(":")
        return getattr(importlib.import_module(module_name), attr)


def _triton_precondition(q: torch.Tensor) -> str | None:
    try:
        from diptych.kernels.triton_attention import interpreter_active
    except ImportError as exc:
        return f"backend 'triton' needs Triton: {exc}"
    if q.device.type == "cpu":
        if not interpreter_active():
            return "backend 'triton' runs on CPU only in Triton's interpreter (TRITON_INTERPRET=1 before importing triton)"
        if q.dtype == torch.bfloat16:
            return "backend 'triton' cannot use bfloat16 in Triton's interpreter (its bf16 tl.dot is wrong)"
    return None


BUILTIN_BACKENDS: Mapping[str, AttentionBackend] = MappingProxyType(
    {
        backend.name: backend
        for backend in (
            AttentionBackend(
                name="triton",
                target="diptych.kernels.triton_attention:triton_attention",
                devices=frozenset({"cuda", "cpu"}),
                dtypes=_FLOATS,
                head_dims=(16, 256),
                auto_rank={"cuda": 0},
                precondition=_triton_precondition,
            ),
            AttentionBackend(
                name="sdpa",
                target="diptych.kernels.sdpa_segments:sdpa_segments_attention",
                devices=frozenset({"cpu", "cuda"}),
                dtypes=_FLOATS | {torch.float64},
                auto_rank={"cpu": 0, "cuda": 1},  # fastest measured on CPU (bench attention)
            ),
            AttentionBackend(
                name="flex",
                target="diptych.kernels.flex:flex_attention_packed",
                devices=frozenset({"cpu", "cuda"}),
                dtypes=_FLOATS,
                head_dims=(16, 256),
            ),
            AttentionBackend(
                name="reference",
                target="diptych.kernels.reference:reference_attention",
                devices=frozenset({"cpu", "cuda"}),
                dtypes=_FLOATS | {torch.float64},
                auto_rank={"cpu": 99, "cuda": 99},
            ),
        )
    }
)


def select_backend(
    q: torch.Tensor, backend: str = "auto", registry: Mapping[str, AttentionBackend] = BUILTIN_BACKENDS
) -> AttentionBackend:
    """The named backend if it accepts ``q``, or for "auto" the best-ranked one that does."""
    if backend != "auto":
        if backend not in registry:
            raise ValueError(f"unknown attention backend {backend!r}; known: {sorted(registry)} or 'auto'")
        reason = registry[backend].refusal(q)
        if reason is not None:
            raise ValueError(reason)
        return registry[backend]
    device = q.device.type
    ranked = sorted((b for b in registry.values() if device in b.auto_rank), key=lambda b: b.auto_rank[device])
    refusals = []
    for candidate in ranked:
        reason = candidate.refusal(q)
        if reason is None:
            return candidate
        refusals.append(reason)
    raise ValueError(f"no attention backend accepts these inputs: {'; '.join(refusals) or 'none registered'}")


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    layout: MaskLayout,
    *,
    backend: str = "auto",
    scale: float | None = None,
    registry: Mapping[str, AttentionBackend] = BUILTIN_BACKENDS,
) -> torch.Tensor:
    """Mixed causal / bidirectional-image attention over a packed varlen batch.

    ``q`` is [num_q_rows, Hq, D] (the last ``q_len`` tokens of each sequence, then any
    padding rows), ``k`` and ``v`` are [>= total_k, Hkv, D] with ``Hq % Hkv == 0``.
    Returns [num_q_rows, Hq, D]; padding rows are zero. ``scale`` defaults to 1/sqrt(D).
    """
    _check_inputs(q, k, v, layout)
    chosen = select_backend(q, backend, registry)
    logger.debug("attention backend %s for %s %s", chosen.name, tuple(q.shape), q.dtype)
    return chosen.load()(q, k, v, layout, 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale)


def _check_inputs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: MaskLayout) -> None:
    if q.dim() != 3 or k.dim() != 3 or v.dim() != 3:
        raise ValueError(f"q, k, v must be [tokens, heads, head_dim]; got {q.dim()}-d, {k.dim()}-d, {v.dim()}-d")
    if k.shape != v.shape:
        raise ValueError(f"k and v shapes differ: {tuple(k.shape)} vs {tuple(v.shape)}")
    if q.shape[2] != k.shape[2]:
        raise ValueError(f"head_dim of q ({q.shape[2]}) and k ({k.shape[2]}) differ")
    if q.shape[1] % k.shape[1]:
        raise ValueError(f"query heads ({q.shape[1]}) must be a multiple of KV heads ({k.shape[1]})")
    if q.dtype != k.dtype or q.dtype != v.dtype:
        raise ValueError(f"q, k, v dtypes differ: {q.dtype}, {k.dtype}, {v.dtype}")
    if not q.device == k.device == v.device:
        raise ValueError(f"q, k, v devices differ: {q.device}, {k.device}, {v.device}")
    if q.shape[0] != layout.num_q_rows:
        raise ValueError(f"q has {q.shape[0]} rows but the layout has {layout.num_q_rows} query rows")
    if k.shape[0] < layout.total_k:
        raise ValueError(f"k has {k.shape[0]} rows but the layout's sequences hold {layout.total_k} keys")
    if q.stride(-1) != 1 or k.stride(-1) != 1 or v.stride(-1) != 1:
        raise ValueError("q, k, v must be contiguous in head_dim (stride 1 in the last dimension)")
