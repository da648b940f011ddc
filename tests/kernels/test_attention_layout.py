"""The mask metadata (intervals, segments, cu_seqlens) against the mask's definition."""

from __future__ import annotations

import pytest
import torch
from attention_cases import Case, cases, interval_mask
from hypothesis import given, settings

from diptych.kernels import MaskLayout, SequenceSpec, reference_mask


@settings(max_examples=80, deadline=None)
@given(cases())
def test_intervals_equal_the_definition(case: Case) -> None:
    layout = case.layout
    assert torch.equal(interval_mask(layout, layout.total_k), reference_mask(layout))


@settings(max_examples=80, deadline=None)
@given(cases())
def test_segments_tile_the_real_rows_and_match_the_intervals(case: Case) -> None:
    layout = case.layout
    covered = torch.zeros(layout.num_q_rows, dtype=torch.int64)
    for seg in layout.segments:
        covered[seg.q_start : seg.q_end] += 1
        n = seg.num_queries
        # Bottom-right causal: row i sees one key fewer than row i + 1; image: all equal.
        expected_end = seg.k_end - (n - 1 - torch.arange(n)) if seg.causal else torch.full((n,), seg.k_end)
        assert torch.equal(layout.kv_end[seg.q_start : seg.q_end].long(), expected_end)
        assert bool((layout.kv_start[seg.q_start : seg.q_end] == seg.k_start).all())
    assert torch.equal(covered[: layout.total_q], torch.ones(layout.total_q, dtype=torch.int64))
    assert not covered[layout.total_q :].any()
    assert not (layout.kv_end[layout.total_q :] - layout.kv_start[layout.total_q :]).any()


def test_packed_batch_with_cached_prefix_and_decode() -> None:
    layout = MaskLayout.build(
        [
            SequenceSpec(kv_len=6, image_spans=((2, 5),)),  # T2 I3 T1, full prefill
            SequenceSpec(kv_len=5, q_len=3, image_spans=((1, 4),)),  # queries start inside the image
            SequenceSpec(kv_len=4, q_len=1),  # decode
        ],
        num_q_rows=12,
    )
    assert layout.cu_seqlens_q.tolist() == [0, 6, 9, 10]
    assert layout.cu_seqlens_k.tolist() == [0, 6, 11, 15]
    assert layout.kv_start.tolist() == [0] * 6 + [6] * 3 + [11] + [0, 0]
    # Seq 0: text sees itself, the image block sees to its end (5). Seq 1: positions 2, 3
    # are in the image [1, 4): they see to 4; position 4 is text. Then decode, padding.
    assert layout.kv_end.tolist() == [1, 2, 5, 5, 5, 6, 6 + 4, 6 + 4, 6 + 5, 15, 0, 0]
    assert layout.visible_pairs() == 1 + 2 + 5 * 3 + 6 + 4 * 2 + 5 + 4


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (SequenceSpec(kv_len=4, q_len=5), "q_len"),
        (SequenceSpec(kv_len=4, image_spans=((2, 5),)), "image span"),
        (SequenceSpec(kv_len=8, image_spans=((2, 5), (4, 6))), "sorted and disjoint"),
        (SequenceSpec(kv_len=8, image_spans=((3, 3),)), "image span"),
    ],
)
def test_invalid_specs_are_refused(spec: SequenceSpec, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        MaskLayout.build([spec])


def test_too_few_query_rows_is_refused() -> None:
    with pytest.raises(ValueError, match="num_q_rows=3"):
        MaskLayout.build([SequenceSpec(kv_len=4)], num_q_rows=3)


def test_from_varlen_matches_specs() -> None:
    specs = [SequenceSpec(kv_len=6, image_spans=((2, 5),)), SequenceSpec(kv_len=5, q_len=3, image_spans=((1, 4),))]
    direct = MaskLayout.build(specs, num_q_rows=10)
    varlen = MaskLayout.from_varlen(
        torch.tensor([0, 6, 9]), torch.tensor([0, 6, 11]), [[(2, 5)], [(1, 4)]], num_q_rows=10
    )
    assert [(s.kv_len, s.num_queries, s.image_spans) for s in varlen.specs] == [(6, 6, ((2, 5),)), (5, 3, ((1, 4),))]
    assert torch.equal(varlen.kv_end, direct.kv_end) and varlen.segments == direct.segments
    with pytest.raises(ValueError, match="image_spans has 1 entries for 2 sequences"):
        MaskLayout.from_varlen([0, 6, 9], [0, 6, 11], [[(2, 5)]])
