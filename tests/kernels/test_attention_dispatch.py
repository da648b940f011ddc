"""The dispatch function: backend choice, declared constraints, input checks."""

from __future__ import annotations

import pytest
import torch

from diptych.kernels import BUILTIN_BACKENDS, AttentionBackend, MaskLayout, SequenceSpec, attention, select_backend

LAYOUT = MaskLayout.build([SequenceSpec(kv_len=10, image_spans=((3, 7),))])


def _qkv(dtype: torch.dtype = torch.float32, heads: int = 4, kv_heads: int = 2, dim: int = 16) -> tuple:
    gen = torch.Generator().manual_seed(0)
    return tuple(torch.randn(10, h, dim, generator=gen).to(dtype) for h in (heads, kv_heads, kv_heads))


def test_auto_picks_segment_sdpa_on_cpu_and_the_reference_is_registered() -> None:
    q, _, _ = _qkv()
    assert select_backend(q).name == "sdpa"
    assert "reference" in BUILTIN_BACKENDS
    assert select_backend(q, "reference").name == "reference"


def test_named_backends_agree_on_a_small_case() -> None:
    q, k, v = _qkv(torch.float64)
    expected = attention(q, k, v, LAYOUT, backend="reference")
    torch.testing.assert_close(attention(q, k, v, LAYOUT), expected)
    scaled = attention(q, k, v, LAYOUT, backend="reference", scale=0.1)
    torch.testing.assert_close(attention(q, k, v, LAYOUT, backend="sdpa", scale=0.1), scaled)
    assert not torch.allclose(scaled, expected)


def test_triton_on_cpu_needs_the_interpreter() -> None:
    pytest.importorskip("triton")
    from diptych.kernels.triton_attention import interpreter_active

    if interpreter_active():
        pytest.skip("this process runs Triton's interpreter")
    q, k, v = _qkv()
    with pytest.raises(ValueError, match="TRITON_INTERPRET=1"):
        attention(q, k, v, LAYOUT, backend="triton")


def test_declared_head_dims_are_enforced() -> None:
    q, k, v = _qkv(dim=8)
    with pytest.raises(ValueError, match="head dims 16..256, not 8"):
        attention(q, k, v, LAYOUT, backend="flex")


def test_unknown_backend_names_the_known_ones() -> None:
    q, k, v = _qkv()
    with pytest.raises(ValueError, match=r"unknown attention backend 'fast'.*'reference'"):
        attention(q, k, v, LAYOUT, backend="fast")


def test_auto_skips_backends_that_refuse_in_rank_order() -> None:
    refusing = AttentionBackend(
        name="never",
        target="diptych.kernels.reference:reference_attention",
        devices=frozenset({"cpu"}),
        dtypes=frozenset({torch.float32}),
        auto_rank={"cpu": 0},
        precondition=lambda q: "refuses everything",
    )
    registry = {"never": refusing, "reference": BUILTIN_BACKENDS["reference"]}
    q, _, _ = _qkv()
    assert select_backend(q, registry=registry).name == "reference"
    with pytest.raises(ValueError, match="refuses everything"):
        select_backend(q, registry={"never": refusing})


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda q, k, v: (q[:9], k, v), "q has 9 rows but the layout has 10"),
        (lambda q, k, v: (q, k[:9], v[:9]), "k has 9 rows"),
        (lambda q, k, v: (q[:, :3], k, v), r"query heads \(3\) must be a multiple of KV heads \(2\)"),
        (lambda q, k, v: (q, k.double(), v), "dtypes differ"),
        (lambda q, k, v: (q, k, v[..., :8]), "k and v shapes differ"),
        (lambda q, k, v: (q[..., ::2], k[..., ::2], v[..., ::2]), "contiguous in head_dim"),
    ],
)
def test_bad_inputs_are_refused_with_both_values(change, message: str) -> None:  # noqa: ANN001
    with pytest.raises(ValueError, match=message):
        attention(*change(*_qkv()), LAYOUT)
