"""Mask metadata for mixed causal / bidirectional-image attention over packed batches.

A batch packs several sequences ("documents"). Keys of all sequences are concatenated;
the queries of each sequence are its *last* ``q_len`` key positions (``q_len < kv_len``
when a prefix is cached, ``q_len == 1`` when decoding). The mask is

    visible(q, k) = same_document & (k <= q | same_image_block)

so every query row sees one contiguous key interval ``[kv_start, kv_end)``: it starts at
its document's first key and ends after the query itself, or after the end of the image
block that contains it. That interval (plus a segment list for segment-wise kernels) is
all the metadata any path needs; it is built once per batch and reused by every layer,
and nothing of size L×L is ever built.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass(frozen=True)
class SequenceSpec:
    """One sequence of a packed batch.

    ``image_spans`` are ``(start, end)`` key positions of the bidirectional image blocks,
    0-based within the sequence, sorted, non-overlapping (adjacent blocks are allowed).
    ``q_len=None`` means the whole sequence is queried (prefill without a cached prefix).
    """

    kv_len: int
    q_len: int | None = None
    image_spans: tuple[tuple[int, int], ...] = ()

    @property
    def num_queries(self) -> int:
        return self.kv_len if self.q_len is None else self.q_len

    def validate(self) -> None:
        if self.kv_len < 0:
            raise ValueError(f"kv_len must be >= 0, got {self.kv_len}")
        if not 0 <= self.num_queries <= self.kv_len:
            raise ValueError(f"q_len must lie in [0, kv_len={self.kv_len}], got {self.num_queries}")
        previous_end = 0
        for start, end in self.image_spans:
            if not 0 <= start < end <= self.kv_len:
                raise ValueError(f"image span ({start}, {end}) must satisfy 0 <= start < end <= kv_len={self.kv_len}")
            if start < previous_end:
                raise ValueError(
                    f"image spans must be sorted and disjoint: ({start}, {end}) starts before {previous_end}"
                )
            previous_end = end


@dataclass(frozen=True)
class Segment:
    """A run of query rows that one dense attention call can serve.

    Rows ``[q_start, q_end)`` attend keys starting at ``k_start``. A non-causal segment
    (an image block) sees ``[k_start, k_end)`` from every row; a causal segment (text) is
    aligned bottom-right: its last row sees up to ``k_end`` and each earlier row one key
    less, so ``prefix = (k_end - k_start) - (q_end - q_start)`` keys are visible to all.
    """

    q_start: int
    q_end: int
    k_start: int
    k_end: int
    causal: bool

    @property
    def num_queries(self) -> int:
        return self.q_end - self.q_start

    @property
    def prefix(self) -> int:
        return (self.k_end - self.k_start) - self.num_queries


@dataclass(frozen=True, eq=False)
class MaskLayout:
    """Per-batch metadata: cu_seqlens, per-row key intervals and the segment list.

    Query rows past ``cu_seqlens_q[-1]`` (up to ``num_q_rows``) are padding: their
    interval is empty and every path writes zeros for them. Key rows past
    ``cu_seqlens_k[-1]`` are never visible.
    """

    specs: tuple[SequenceSpec, ...]
    cu_seqlens_q: torch.Tensor  # int32 [num_seqs + 1]
    cu_seqlens_k: torch.Tensor  # int32 [num_seqs + 1]
    kv_start: torch.Tensor  # int32 [num_q_rows], packed key index
    kv_end: torch.Tensor  # int32 [num_q_rows], exclusive
    segments: tuple[Segment, ...]
    num_q_rows: int
    # Derived metadata that backends memoise per batch (tile maps, block masks), so that
    # every layer reuses it; keyed by the backend's own names.
    cache: dict[Any, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def build(
        cls,
        specs: Sequence[SequenceSpec],
        *,
        num_q_rows: int | None = None,
        device: torch.device | str = "cpu",
    ) -> MaskLayout:
        """Build the metadata; ``num_q_rows`` larger than the real total adds padding rows."""
        specs = tuple(specs)
        for spec in specs:
            spec.validate()
        q_lens = [spec.num_queries for spec in specs]
        k_lens = [spec.kv_len for spec in specs]
        total_q = sum(q_lens)
        rows = total_q if num_q_rows is None else num_q_rows
        if rows < total_q:
            raise ValueError(f"num_q_rows={rows} is smaller than the batch's {total_q} query tokens")

        kv_start = torch.zeros(rows, dtype=torch.int32)
        kv_end = torch.zeros(rows, dtype=torch.int32)
        segments: list[Segment] = []
        q_off = k_off = 0
        for spec, q_len in zip(specs, q_lens, strict=True):
            first = spec.kv_len - q_len  # position of the first query within its sequence
            end = torch.arange(first + 1, spec.kv_len + 1, dtype=torch.int32)
            for start, stop in spec.image_spans:
                if stop > first:
                    end[max(start, first) - first : stop - first] = stop
            kv_start[q_off : q_off + q_len] = k_off
            kv_end[q_off : q_off + q_len] = end + k_off
            segments.extend(_segments(spec, first, q_off, k_off))
            q_off += q_len
            k_off += spec.kv_len

        return cls(
            specs=specs,
            cu_seqlens_q=_cumulative(q_lens).to(device),
            cu_seqlens_k=_cumulative(k_lens).to(device),
            kv_start=kv_start.to(device),
            kv_end=kv_end.to(device),
            segments=tuple(segments),
            num_q_rows=rows,
        )

    @classmethod
    def from_varlen(
        cls,
        cu_seqlens_q: Sequence[int] | torch.Tensor,
        cu_seqlens_k: Sequence[int] | torch.Tensor,
        image_spans: Sequence[Sequence[tuple[int, int]]] | None = None,
        *,
        num_q_rows: int | None = None,
        device: torch.device | str = "cpu",
    ) -> MaskLayout:
        """From vLLM-style cumulative lengths (queries are the last tokens of each sequence)
        and, per sequence, its image spans in key positions."""
        q_bounds = [int(x) for x in cu_seqlens_q]
        k_bounds = [int(x) for x in cu_seqlens_k]
        if len(q_bounds) != len(k_bounds) or not q_bounds:
            raise ValueError(f"cu_seqlens_q has {len(q_bounds)} entries and cu_seqlens_k {len(k_bounds)}; need equal, >= 1")
        count = len(q_bounds) - 1
        spans = [()] * count if image_spans is None else [tuple(map(tuple, s)) for s in image_spans]
        if len(spans) != count:
            raise ValueError(f"image_spans has {len(spans)} entries for {count} sequences")
        specs = [
            SequenceSpec(kv_len=k_bounds[i + 1] - k_bounds[i], q_len=q_bounds[i + 1] - q_bounds[i], image_spans=spans[i])
            for i in range(count)
        ]
        return cls.build(specs, num_q_rows=num_q_rows, device=device)

    @property
    def total_q(self) -> int:
        """Real (non-padding) query rows."""
        return sum(spec.num_queries for spec in self.specs)

    @property
    def total_k(self) -> int:
        return sum(spec.kv_len for spec in self.specs)

    @property
    def device(self) -> torch.device:
        return self.kv_start.device

    def visible_pairs(self) -> int:
        """Number of visible (query, key) pairs, the work an ideal kernel does."""
        return int((self.kv_end.long() - self.kv_start.long()).sum())

    def to(self, device: torch.device | str) -> MaskLayout:
        """The same layout with its tensors on ``device`` (derived caches are not carried)."""
        return MaskLayout(
            specs=self.specs,
            cu_seqlens_q=self.cu_seqlens_q.to(device),
            cu_seqlens_k=self.cu_seqlens_k.to(device),
            kv_start=self.kv_start.to(device),
            kv_end=self.kv_end.to(device),
            segments=self.segments,
            num_q_rows=self.num_q_rows,
        )


def _cumulative(lengths: list[int]) -> torch.Tensor:
    return torch.tensor([0, *itertools.accumulate(lengths)], dtype=torch.int32)


def _segments(spec: SequenceSpec, first: int, q_off: int, k_off: int) -> list[Segment]:
    """Split one sequence's query positions ``[first, kv_len)`` into text runs and image blocks."""

    def segment(lo: int, hi: int, causal: bool) -> Segment:
        return Segment(q_off + lo - first, q_off + hi - first, k_off, k_off + hi, causal)

    out: list[Segment] = []
    cursor = first
    for start, stop in spec.image_spans:
        if stop <= first:
            continue  # the block lies entirely in the cached prefix: only a key range here
        start = max(start, first)
        if start > cursor:
            out.append(segment(cursor, start, causal=True))
        out.append(segment(start, stop, causal=False))
        cursor = stop
    if cursor < spec.kv_len:
        out.append(segment(cursor, spec.kv_len, causal=True))
    return out
