"""Brute-force reference: float64 attention with the mask evaluated from its definition.

It deliberately ignores the interval metadata of :class:`MaskLayout` and rebuilds, from
the sequence specs alone, each token's document, position and image block, so that tests
comparing a fast path against it also check the metadata. Fully masked rows (padding)
give zeros instead of NaN. It materialises query-chunk × keys score blocks: slow, exact,
for tests and small inputs only.
"""

from __future__ import annotations

import torch

from diptych.kernels.layout import MaskLayout

# Query rows per score block, so that the reference stays usable for a few thousand tokens.
_ROWS_PER_BLOCK = 256


def token_labels(layout: MaskLayout) -> tuple[torch.Tensor, ...]:
    """Per query row and per key row: (document, position in document, image block id).

    Padding query rows get document -1 (they match no key); text tokens get block -1.
    Block ids are unique across the batch.
    """
    q_doc, q_pos, q_blk, k_doc, k_pos, k_blk = [], [], [], [], [], []
    block_id = 0
    for doc, spec in enumerate(layout.specs):
        block = torch.full((spec.kv_len,), -1, dtype=torch.int64)
        for start, end in spec.image_spans:
            block[start:end] = block_id
            block_id += 1
        pos = torch.arange(spec.kv_len)
        first = spec.kv_len - spec.num_queries
        k_doc.append(torch.full((spec.kv_len,), doc))
        k_pos.append(pos)
        k_blk.append(block)
        q_doc.append(torch.full((spec.num_queries,), doc))
        q_pos.append(pos[first:])
        q_blk.append(block[first:])
    padding = layout.num_q_rows - layout.total_q
    q_doc.append(torch.full((padding,), -1))
    q_pos.append(torch.zeros(padding, dtype=torch.int64))
    q_blk.append(torch.full((padding,), -1))
    return tuple(torch.cat(parts).long() for parts in (q_doc, q_pos, q_blk, k_doc, k_pos, k_blk))


def reference_mask(layout: MaskLayout, rows: slice = slice(None)) -> torch.Tensor:
    """Boolean [rows, total_k] mask: ``same_document & (k <= q | same_image_block)``."""
    return _mask_from_labels(token_labels(layout), rows)


def _mask_from_labels(labels: tuple[torch.Tensor, ...], rows: slice) -> torch.Tensor:
    q_doc, q_pos, q_blk, k_doc, k_pos, k_blk = labels
    q_doc, q_pos, q_blk = q_doc[rows, None], q_pos[rows, None], q_blk[rows, None]
    same_document = q_doc == k_doc[None]
    same_image_block = (q_blk == k_blk[None]) & (q_blk >= 0)
    return same_document & ((k_pos[None] <= q_pos) | same_image_block)


def reference_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: MaskLayout, scale: float
) -> torch.Tensor:
    """q [rows, Hq, D], k/v [>= total_k, Hkv, D] → [rows, Hq, D] in q's dtype, computed in float64."""
    group = q.shape[1] // k.shape[1]
    total_k = layout.total_k
    k64 = k[:total_k].double().repeat_interleave(group, dim=1).transpose(0, 1)  # [H, K, D]
    v64 = v[:total_k].double().repeat_interleave(group, dim=1).transpose(0, 1)
    out = torch.zeros(q.shape, dtype=torch.float64, device=q.device)
    labels = token_labels(layout)
    for lo in range(0, layout.num_q_rows, _ROWS_PER_BLOCK):
        rows = slice(lo, min(lo + _ROWS_PER_BLOCK, layout.num_q_rows))
        mask = _mask_from_labels(labels, rows).to(q.device)  # [R, K]
        scores = torch.einsum("rhd,hkd->hrk", q[rows].double(), k64) * scale
        scores = scores.masked_fill(~mask[None], float("-inf"))
        # Guard fully masked rows: softmax over all -inf is NaN; those rows output zeros.
        any_visible = mask.any(dim=1)
        probs = torch.softmax(scores, dim=-1).nan_to_num(0.0) * any_visible[None, :, None]
        out[rows] = torch.einsum("hrk,hkd->rhd", probs, v64)
    return out.to(q.dtype)
