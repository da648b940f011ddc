"""Block-diagonal attention for packed batches: backend choice, CPU path against unpacked attention."""

from __future__ import annotations

import sys
import types
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from diptych.kernels import block_diagonal
from diptych.kernels.block_diagonal import (
    block_diagonal_attention,
    reference_block_diagonal,
    select_block_diagonal_backend,
)


def _packed(q_lens: list[int], kv_lens: list[int], heads: int, kv_heads: int, dim: int, dtype: torch.dtype, seed: int):  # noqa: ANN202
    generator = torch.Generator().manual_seed(seed)
    q = torch.randn(sum(q_lens), heads, dim, generator=generator).to(dtype)
    k = torch.randn(sum(kv_lens), kv_heads, dim, generator=generator).to(dtype)
    v = torch.randn(sum(kv_lens), kv_heads, dim, generator=generator).to(dtype)
    return q, k, v


def _unpacked(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_lens: list[int], kv_lens: list[int]) -> torch.Tensor:
    """Each request's attention computed on its own, as an unpacked batch of one would."""
    repeat = q.shape[1] // k.shape[1]
    outs = []
    for qi, ki, vi in zip(q.split(q_lens), k.split(kv_lens), v.split(kv_lens), strict=True):
        ki, vi = ki.repeat_interleave(repeat, dim=1), vi.repeat_interleave(repeat, dim=1)
        out = F.scaled_dot_product_attention(qi.transpose(0, 1)[None], ki.transpose(0, 1)[None], vi.transpose(0, 1)[None])
        outs.append(out[0].transpose(0, 1))
    return torch.cat(outs)


LENGTHS = st.lists(st.integers(1, 70), min_size=1, max_size=6)


@settings(max_examples=40, deadline=None)
@given(LENGTHS, st.data(), st.sampled_from([(2, 2), (4, 2), (4, 1)]), st.sampled_from([torch.float32, torch.float16]))
def test_cpu_path_equals_unpacked_attention(q_lens: list[int], data: Any, heads: tuple[int, int], dtype: torch.dtype) -> None:
    # Some sequences repeat a length (guidance branches), so the stacked-call path is exercised too.
    if data.draw(st.booleans()):
        q_lens = q_lens + q_lens[:1]
    kv_lens = data.draw(st.one_of(st.just(q_lens), st.lists(st.integers(1, 70), min_size=len(q_lens), max_size=len(q_lens))))
    q, k, v = _packed(q_lens, kv_lens, heads[0], heads[1], 16, dtype, seed=len(q_lens))
    ours = block_diagonal_attention(q, k, v, q_lens, kv_lens)
    tolerance = {"atol": 2e-3, "rtol": 2e-3} if dtype == torch.float16 else {"atol": 1e-5, "rtol": 1e-5}
    torch.testing.assert_close(ours, _unpacked(q, k, v, q_lens, kv_lens), **tolerance)
    torch.testing.assert_close(ours, reference_block_diagonal(q, k, v, q_lens, kv_lens), **tolerance)


def test_tokens_do_not_see_other_requests() -> None:
    q, k, v = _packed([5, 7], [5, 7], 2, 2, 8, torch.float32, seed=0)
    changed = v.clone()
    changed[5:] += 10.0  # the second request's values only
    before = block_diagonal_attention(q, k, v, [5, 7])
    after = block_diagonal_attention(q, k, changed, [5, 7])
    assert torch.equal(before[:5], after[:5]) and not torch.allclose(before[5:], after[5:])


def test_xformers_is_chosen_only_for_cuda_tensors_with_xformers_installed() -> None:
    assert select_block_diagonal_backend("cuda", xformers_available=lambda: True) == "xformers"
    assert select_block_diagonal_backend(torch.device("cuda", 1), xformers_available=lambda: True) == "xformers"
    assert select_block_diagonal_backend("cuda", xformers_available=lambda: False) == "sdpa"
    assert select_block_diagonal_backend("cpu", xformers_available=lambda: True) == "sdpa"
    # Here (no GPU): auto runs the CPU path even if xformers were importable.
    assert select_block_diagonal_backend("cpu") == "sdpa"


def test_xformers_backend_refuses_cpu_tensors() -> None:
    q, k, v = _packed([3], [3], 2, 2, 8, torch.float32, seed=0)
    with pytest.raises(ValueError, match="CUDA"):
        block_diagonal_attention(q, k, v, [3], backend="xformers")


def test_xformers_path_passes_the_block_diagonal_bias(monkeypatch: pytest.MonkeyPatch) -> None:
    """The call into xformers, with a stand-in module that computes what the real kernel would."""
    calls: list[dict[str, Any]] = []

    class BlockDiagonalMask:
        def __init__(self, q_seqlen: list[int], kv_seqlen: list[int]) -> None:
            self.q_seqlen, self.kv_seqlen = q_seqlen, kv_seqlen

        @classmethod
        def from_seqlens(cls, q_seqlen: list[int], kv_seqlen: list[int]) -> BlockDiagonalMask:
            return cls(q_seqlen, kv_seqlen)

    def memory_efficient_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_bias: Any, scale: float) -> torch.Tensor:
        calls.append({"shapes": (q.shape, k.shape), "q": attn_bias.q_seqlen, "kv": attn_bias.kv_seqlen, "scale": scale})
        return reference_block_diagonal(q[0], k[0], v[0], attn_bias.q_seqlen, attn_bias.kv_seqlen, scale)[None]

    fmha = types.SimpleNamespace(attn_bias=types.SimpleNamespace(BlockDiagonalMask=BlockDiagonalMask),
                                 memory_efficient_attention=memory_efficient_attention)
    monkeypatch.setitem(sys.modules, "xformers", types.ModuleType("xformers"))
    monkeypatch.setitem(sys.modules, "xformers.ops", types.SimpleNamespace(fmha=fmha))
    q, k, v = _packed([4, 6], [3, 5], 4, 2, 8, torch.float32, seed=1)
    out = block_diagonal._xformers(q, k, v, [4, 6], [3, 5], 0.5)
    assert calls == [{"shapes": (torch.Size([1, 10, 4, 8]), torch.Size([1, 8, 4, 8])), "q": [4, 6], "kv": [3, 5],
                      "scale": 0.5}]
    torch.testing.assert_close(out, block_diagonal_attention(q, k, v, [4, 6], [3, 5], scale=0.5), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    ("q_lens", "kv_lens", "message"),
    [([3, 3], [3], "2 query sequences"), ([3, 2], [3, 2], "sum to 5"), ([6, 0], [6, 0], ">= 1")],
)
def test_inconsistent_lengths_are_refused(q_lens: list[int], kv_lens: list[int], message: str) -> None:
    q, k, v = _packed([6], [6], 2, 2, 8, torch.float32, seed=0)
    with pytest.raises(ValueError, match=message):
        block_diagonal_attention(q, k, v, q_lens, kv_lens)
