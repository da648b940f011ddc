"""Hypothesis strategies and helpers shared by the attention kernel tests."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from hypothesis import strategies as st

from diptych.kernels import MaskLayout, SequenceSpec, attention, reference_attention

# Lengths around the 64-wide tiles of the Triton kernel (and 128 of FlexAttention).
EDGE_LENGTHS = (1, 2, 63, 64, 65, 127, 129)
TOLERANCE = {torch.float32: 1e-5, torch.float16: 2e-3}


@dataclass(frozen=True)
class Case:
    layout: MaskLayout
    heads: int
    kv_heads: int
    head_dim: int
    extra_keys: int  # key rows past the last sequence, never visible

    def tensors(self, dtype: torch.dtype, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        gen = torch.Generator().manual_seed(seed)
        keys = self.layout.total_k + self.extra_keys
        q = torch.randn(self.layout.num_q_rows, self.heads, self.head_dim, generator=gen)
        k = torch.randn(keys, self.kv_heads, self.head_dim, generator=gen)
        # Values in [-1, 1]: outputs are convex combinations of them, so the fp16
        # tolerance is compared against O(1) numbers.
        v = torch.rand(keys, self.kv_heads, self.head_dim, generator=gen) * 2 - 1
        return q.to(dtype), k.to(dtype), v.to(dtype)


@st.composite
def sequences(draw: st.DrawFn, max_parts: int = 4, lengths: tuple[int, ...] = EDGE_LENGTHS) -> SequenceSpec:
    """A sequence of text runs and image blocks (images may be first, last, adjacent),
    queried in full, over a cached prefix, or for one decode token."""
    parts = draw(st.lists(st.tuples(st.sampled_from("TI"), st.sampled_from(lengths)), min_size=1, max_size=max_parts))
    spans, pos = [], 0
    for kind, length in parts:
        if kind == "I":
            spans.append((pos, pos + length))
        pos += length
    q_len = draw(st.one_of(st.none(), st.just(1), st.integers(1, pos)))
    return SequenceSpec(kv_len=pos, q_len=q_len, image_spans=tuple(spans))


@st.composite
def cases(
    draw: st.DrawFn,
    max_sequences: int = 3,
    max_parts: int = 4,
    head_dims: tuple[int, ...] = (16, 32),
    lengths: tuple[int, ...] = EDGE_LENGTHS,
) -> Case:
    specs = draw(st.lists(sequences(max_parts, lengths), min_size=1, max_size=max_sequences))
    padding_rows = draw(st.sampled_from((0, 0, 1, 5, 64)))
    total_q = sum(spec.num_queries for spec in specs)
    heads, kv_heads = draw(st.sampled_from(((1, 1), (2, 2), (4, 2), (4, 1), (3, 1))))
    return Case(
        layout=MaskLayout.build(specs, num_q_rows=total_q + padding_rows),
        heads=heads,
        kv_heads=kv_heads,
        head_dim=draw(st.sampled_from(head_dims)),
        extra_keys=draw(st.sampled_from((0, 3))),
    )


def reference_for(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: MaskLayout) -> torch.Tensor:
    """The float64 reference on exactly the (already rounded) inputs a path received."""
    return reference_attention(q.double(), k.double(), v.double(), layout, q.shape[-1] ** -0.5)


def interval_mask(layout: MaskLayout, num_k_rows: int) -> torch.Tensor:
    """The [rows, keys] mask the interval metadata describes (tests only: it is L×L)."""
    keys = torch.arange(num_k_rows)
    return (keys[None] >= layout.kv_start[:, None].long()) & (keys[None] < layout.kv_end[:, None].long())


def assert_matches_reference(case: Case, dtype: torch.dtype, backend: str, k_rows: int | None = None) -> None:
    q, k, v = case.tensors(dtype)
    if k_rows is not None:  # pad keys to a fixed count (never visible) so shapes repeat
        k = torch.cat([k, torch.randn(k_rows - k.shape[0], *k.shape[1:]).to(dtype)])
        v = torch.cat([v, torch.randn(k_rows - v.shape[0], *v.shape[1:]).to(dtype)])
    out = attention(q, k, v, case.layout, backend=backend)
    assert out.shape == q.shape and out.dtype == dtype
    expected = reference_for(q, k, v, case.layout)
    torch.testing.assert_close(out.double(), expected, atol=TOLERANCE[dtype], rtol=0)
    assert not out[case.layout.total_q :].any(), "padding rows must be zero"
