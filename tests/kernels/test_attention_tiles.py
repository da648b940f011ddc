"""The tile classifier: full tiles are all visible, skipped tiles all masked, exactly."""

from __future__ import annotations

import torch
from attention_cases import Case, cases
from hypothesis import given, settings
from hypothesis import strategies as st

from diptych.kernels import FULL, PARTIAL, SKIPPED, MaskLayout, SequenceSpec, classify_tiles, reference_mask


def _visible_counts(mask: torch.Tensor, block_m: int, block_n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per tile: visible pairs, and pairs whose query row exists. Key columns past the
    plane count as masked: a kernel may skip bound checks only in full tiles."""
    rows, keys = mask.shape
    tm, tn = -(-rows // block_m), -(-keys // block_n)
    padded = torch.zeros(tm * block_m, tn * block_n, dtype=torch.int64)
    exists = torch.zeros_like(padded)
    padded[:rows, :keys] = mask.long()
    exists[:rows, :] = 1

    def per_tile(x: torch.Tensor) -> torch.Tensor:
        return x.view(tm, block_m, tn, block_n).sum(dim=(1, 3))

    return per_tile(padded), per_tile(exists)


@settings(max_examples=80, deadline=None)
@given(cases(), st.sampled_from(((64, 64), (16, 16), (32, 64), (128, 128))))
def test_tile_classes_are_exact(case: Case, blocks: tuple[int, int]) -> None:
    layout, (block_m, block_n) = case.layout, blocks
    num_k_rows = layout.total_k + case.extra_keys
    tiles = classify_tiles(layout.kv_start, layout.kv_end, num_k_rows, block_m, block_n)
    # The definition's mask, not the intervals: the classifier is checked end to end.
    mask = torch.zeros(layout.num_q_rows, num_k_rows, dtype=torch.bool)
    mask[:, : layout.total_k] = reference_mask(layout)
    visible, existing = _visible_counts(mask, block_m, block_n)

    assert bool((visible[tiles.classes == SKIPPED] == 0).all()), "a skipped tile has a visible pair"
    assert bool((visible[tiles.classes == FULL] == existing[tiles.classes == FULL]).all()), (
        "a full tile has a masked pair"
    )
    partial = tiles.classes == PARTIAL
    assert bool(((visible[partial] > 0) & (visible[partial] < existing[partial])).all()), "a partial tile is uniform"


@settings(max_examples=60, deadline=None)
@given(cases())
def test_tile_lists_follow_the_classes(case: Case) -> None:
    layout = case.layout
    tiles = classify_tiles(layout.kv_start, layout.kv_end, layout.total_k + case.extra_keys, 64, 64)
    for m in range(tiles.num_q_tiles):
        lo, hi = int(tiles.tile_ptr[m]), int(tiles.tile_ptr[m + 1])
        split = lo + int(tiles.num_partial[m])
        listed = tiles.tile_idx[lo:hi].tolist()
        assert listed[: split - lo] == (tiles.classes[m] == PARTIAL).nonzero().flatten().tolist()
        assert listed[split - lo :] == (tiles.classes[m] == FULL).nonzero().flatten().tolist()


def test_full_tiles_need_no_mask_in_a_long_prefill() -> None:
    # T2048 + I1024 + T32: the image rows' tiles up to the image's end are all full.
    layout = MaskLayout.build([SequenceSpec(kv_len=3104, image_spans=((2048, 3072),))])
    tiles = classify_tiles(layout.kv_start, layout.kv_end, 3104, 64, 64)
    image_tiles = tiles.classes[2048 // 64 : 3072 // 64]
    assert bool((image_tiles[:, : 3072 // 64] == FULL).all())
    assert bool((image_tiles[:, 3072 // 64 :] == SKIPPED).all())
    # Text tiles: m full tiles left of the diagonal in query tile m, the diagonal partial;
    # the 16 image tiles: 48 full each; the last 32 text rows: 48 full, 1 partial.
    assert int((tiles.classes == FULL).sum()) == sum(range(32)) + 16 * 48 + 48
    assert int((tiles.classes == PARTIAL).sum()) == 32 + 1
