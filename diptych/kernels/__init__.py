"""Attention for mixed masks: causal text, bidirectional image blocks, packed batches.

    layout = MaskLayout.build([SequenceSpec(kv_len=672, image_spans=((64, 640),))])
    out = attention(q, k, v, layout)          # q [672, Hq, D], k/v [672, Hkv, D]

Build the layout once per batch and pass it to every layer. Backends: "sdpa"
(segment-wise SDPA, the CPU default), "triton" (block-sparse GPU kernel, the CUDA
default), "flex" (compiled FlexAttention), "reference" (float64 brute force).
"""

from diptych.kernels.dispatch import BUILTIN_BACKENDS, AttentionBackend, attention, select_backend
from diptych.kernels.layout import MaskLayout, Segment, SequenceSpec
from diptych.kernels.reference import reference_attention, reference_mask
from diptych.kernels.tiles import FULL, PARTIAL, SKIPPED, TileMap, classify_tiles

__all__ = [
    "BUILTIN_BACKENDS",
    "FULL",
    "PARTIAL",
    "SKIPPED",
    "AttentionBackend",
    "MaskLayout",
    "Segment",
    "SequenceSpec",
    "TileMap",
    "attention",
    "classify_tiles",
    "reference_attention",
    "reference_mask",
    "select_backend",
]
