"""Every attention path against the float64 reference, over random layouts.

Layouts come from ``attention_cases.cases``: segment lengths around tile edges, images
first, last and adjacent, cached prefixes, single-token decode, grouped-query heads and
padding rows. The Triton kernel has its own module (it needs Triton's interpreter).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from attention_cases import Case, assert_matches_reference, cases, sequences
from hypothesis import given, settings
from hypothesis import strategies as st

from diptych.kernels import MaskLayout, SequenceSpec, reference_attention

DTYPES = st.sampled_from((torch.float32, torch.float16))


@settings(max_examples=60, deadline=None)
@given(cases(head_dims=(8, 16, 32, 64)), DTYPES)
def test_sdpa_segments_match_reference(case: Case, dtype: torch.dtype) -> None:
    assert_matches_reference(case, dtype, "sdpa")


def test_sdpa_segments_split_long_text_after_a_prefix() -> None:
    # A 600-token text run over a 300-token cached prefix goes through three masked chunks.
    layout = MaskLayout.build([SequenceSpec(kv_len=900, q_len=600, image_spans=((100, 250),))])
    assert_matches_reference(Case(layout, 4, 2, 16, 0), torch.float32, "sdpa")


# FlexAttention compiles once per shape (tens of seconds on CPU): every case is padded to
# one shape, with fixed heads and head_dim, so the whole test compiles once per dtype.
_FLEX_ROWS = 2 * 2 * 129 + 64


@settings(max_examples=8, deadline=None)
@given(st.lists(sequences(max_parts=2), min_size=1, max_size=2), DTYPES)
def test_flex_attention_matches_reference(specs: list[SequenceSpec], dtype: torch.dtype) -> None:
    case = Case(MaskLayout.build(specs, num_q_rows=_FLEX_ROWS), heads=4, kv_heads=2, head_dim=32, extra_keys=0)
    assert_matches_reference(case, dtype, "flex", k_rows=_FLEX_ROWS)


def test_reference_agrees_with_sdpa_on_plain_masks() -> None:
    # Text only is causal attention; one image covering the sequence is full attention.
    gen = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(50, 2, 8, generator=gen, dtype=torch.float64) for _ in range(3))

    def plain(is_causal: bool) -> torch.Tensor:
        return F.scaled_dot_product_attention(
            q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1), is_causal=is_causal
        ).transpose(0, 1)

    text = MaskLayout.build([SequenceSpec(kv_len=50)])
    image = MaskLayout.build([SequenceSpec(kv_len=50, image_spans=((0, 50),))])
    torch.testing.assert_close(reference_attention(q, k, v, text, 8**-0.5), plain(True))
    torch.testing.assert_close(reference_attention(q, k, v, image, 8**-0.5), plain(False))


def test_reference_guards_fully_masked_rows() -> None:
    layout = MaskLayout.build([SequenceSpec(kv_len=3)], num_q_rows=5)
    q, k, v = torch.randn(5, 1, 4), torch.randn(3, 1, 4), torch.randn(3, 1, 4)
    out = reference_attention(q, k, v, layout, 0.5)
    assert torch.isfinite(out).all()
    assert not out[3:].any()
