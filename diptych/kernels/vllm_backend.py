"""A vLLM attention backend that honours prefix-LM image ranges (``mm_prefix``).

vLLM tells attention backends which tokens of a request form a bidirectional image block
(``CommonAttentionMetadata.mm_req_doc_ranges``, filled for models whose config says
``is_mm_prefix_lm``), but its CPU backend ignores them and attends causally.
This backend builds a ``MaskLayout`` from the batch's query/key lengths and those ranges
once per step (metadata builder) and calls ``diptych.kernels.attention`` in every layer,
so prefill, chunked prefill over a cached prefix and decode all go through one path.

KV cache: vLLM allocates each layer's cache as ``[num_blocks, num_kv_heads, block_size,
2 * head_size]`` (read through :mod:`diptych.compat.vllm_internals`, like the per-step
metadata); this backend stores a token's key in the first ``head_size`` channels and its
value in the last (its own split, written and read only here), and each step gathers each
sequence's keys through its block table. Sliding windows are honoured
(the rule transformers applies to prefix-LM models with a window: window AND (causal OR
same image)) by a masked per-sequence
path that is used only when a sequence is longer than the window. (vLLM itself drops the
range of an image longer than the model's sliding window, for every layer; such an image
is then causal here too, as on vLLM's GPU backends.)

Selection: see ``diptych.kernels.vllm_select`` and ``diptych.engine.vllm_plugin``; engines
ask for this backend with ``attention_config={"backend": "CUSTOM"}``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from vllm.v1.attention.backend import (
    AttentionBackend,
    AttentionImpl,
    AttentionLayer,
    AttentionMetadataBuilder,
    AttentionType,
    CommonAttentionMetadata,
    MultipleOf,
)
from vllm.v1.kv_cache_interface import AttentionSpec, KVCacheLayout

from diptych.compat.vllm_internals import (
    kv_cache_block_size,
    kv_cache_channels,
    paged_kv_layouts,
    read_kv_slots,
    read_step_metadata,
    write_kv_slots,
)
from diptych.kernels.dispatch import attention
from diptych.kernels.layout import MaskLayout, SequenceSpec

logger = logging.getLogger(__name__)

# vLLM looks a backend's name up in AttentionBackendEnum: ours is registered as CUSTOM.
BACKEND_NAME = "CUSTOM"


@dataclass(frozen=True, eq=False)
class MixedMaskMetadata:
    """One step's attention metadata, shared by every layer of a KV-cache group."""

    layout: MaskLayout
    num_actual_tokens: int
    # Per key of the packed batch (sequence after sequence): cache block and offset in it.
    key_blocks: torch.Tensor  # int64 [total_k]
    key_offsets: torch.Tensor  # int64 [total_k]
    block_size: int
    max_seq_len: int


class MixedMaskAttentionBackend(AttentionBackend):
    """Paged-KV attention with causal text and bidirectional image blocks (any device SDPA runs on)."""

    forward_includes_kv_cache_update: bool = False
    supported_dtypes: ClassVar[list[torch.dtype]] = [torch.float16, torch.bfloat16, torch.float32]
    supported_kv_cache_dtypes: ClassVar[list[Any]] = ["auto", "float16", "bfloat16"]

    @staticmethod
    def get_name() -> str:
        return BACKEND_NAME

    @staticmethod
    def get_impl_cls() -> type[MixedMaskAttentionImpl]:
        return MixedMaskAttentionImpl

    @staticmethod
    def get_builder_cls() -> type[MixedMaskMetadataBuilder]:
        return MixedMaskMetadataBuilder

    @staticmethod
    def get_supported_kernel_block_sizes(kv_cache_spec: Any = None) -> list[int | MultipleOf]:
        return [MultipleOf(1)]

    @classmethod
    def supported_kv_cache_layouts(cls) -> tuple[KVCacheLayout, ...]:
        # Per layer [blocks, heads, block_size, 2 * head_size]: the shape indexing below assumes.
        return paged_kv_layouts()

    @classmethod
    def supports_mm_prefix(cls) -> bool:
        return True

    @classmethod
    def supports_sliding_window(cls) -> bool:
        return True


class MixedMaskMetadataBuilder(AttentionMetadataBuilder[MixedMaskMetadata]):
    """Turns vLLM's per-step metadata into a ``MaskLayout`` and key gather indices."""

    def __init__(self, kv_cache_spec: AttentionSpec, layer_names: list[str], vllm_config: Any, device: torch.device):
        super().__init__(kv_cache_spec, layer_names, vllm_config, device)
        self.block_size = kv_cache_spec.block_size
        logger.info("%s mixed-mask attention for %d layers", BACKEND_NAME, len(layer_names))

    def build(
        self, common_prefix_len: int, common_attn_metadata: CommonAttentionMetadata, fast_build: bool = False
    ) -> MixedMaskMetadata:
        step = read_step_metadata(common_attn_metadata)
        if not step.causal:
            raise NotImplementedError(f"{BACKEND_NAME} serves causal decoder attention (with image blocks) only")
        q_bounds, seq_lens = step.query_bounds, step.seq_lens
        specs = [
            SequenceSpec(
                kv_len=seq_lens[i],
                q_len=q_bounds[i + 1] - q_bounds[i],
                image_spans=image_spans(step.image_ranges.get(i, ()), seq_lens[i]),
            )
            for i in range(step.num_reqs)
        ]
        layout = MaskLayout.build(specs, num_q_rows=step.num_actual_tokens, device=step.device)
        key_blocks, key_offsets = key_locations(step.block_table, seq_lens, self.block_size)
        return MixedMaskMetadata(
            layout=layout,
            num_actual_tokens=step.num_actual_tokens,
            key_blocks=key_blocks,
            key_offsets=key_offsets,
            block_size=self.block_size,
            max_seq_len=max(seq_lens, default=0),
        )


def image_spans(ranges: Any, kv_len: int) -> tuple[tuple[int, int], ...]:
    """vLLM's inclusive ``(start, end)`` token positions → sorted half-open key spans.

    Spans lying wholly past ``kv_len`` (a later chunk) are dropped. A span cut by the end
    of the step's keys cannot be attended bidirectionally (its later keys do not exist
    yet), so it is an error rather than a silently causal image: run prefix-LM models
    with ``disable_chunked_mm_input=True``, which schedules each image whole.
    """
    spans = []
    for start, end_inclusive in sorted(ranges):
        start, end = int(start), int(end_inclusive) + 1
        if start >= kv_len:
            continue
        if end > kv_len:
            raise ValueError(
                f"image tokens [{start}, {end}) are split by chunked prefill at {kv_len}; "
                "serve prefix-LM models with disable_chunked_mm_input=True"
            )
        spans.append((start, end))
    return tuple(spans)


def key_locations(block_table: torch.Tensor, seq_lens: list[int], block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Cache block and in-block offset of every key, sequence after sequence."""
    blocks, offsets = [], []
    for row, kv_len in enumerate(seq_lens):
        positions = torch.arange(kv_len, device=block_table.device)
        blocks.append(block_table[row, positions // block_size].long())
        offsets.append(positions % block_size)
    if not blocks:
        empty = torch.zeros(0, dtype=torch.long, device=block_table.device)
        return empty, empty
    return torch.cat(blocks), torch.cat(offsets)


def write_kv(kv_cache: torch.Tensor, key: torch.Tensor, value: torch.Tensor, slot_mapping: torch.Tensor) -> None:
    """Store new tokens' keys and values at their slots (``slot = block * block_size + offset``).

    Slots < 0 mark padding tokens, which are not stored.
    """
    block_size = kv_cache_block_size(kv_cache)
    slots = slot_mapping[: key.shape[0]].long()
    keep = slots >= 0
    if not bool(keep.all()):
        slots, key, value = slots[keep], key[keep], value[keep]
    write_kv_slots(kv_cache, slots // block_size, slots % block_size, torch.cat((key, value), dim=-1))


def gather_kv(kv_cache: torch.Tensor, blocks: torch.Tensor, offsets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Keys and values ``[total_k, heads, head_size]`` at the given cache locations."""
    rows = read_kv_slots(kv_cache, blocks, offsets)
    head_size = kv_cache_channels(kv_cache) // 2
    return rows[..., :head_size], rows[..., head_size:]


def windowed_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: MaskLayout, scale: float, window: int
) -> torch.Tensor:
    """Sliding-window attention with image blocks, one masked SDPA call per sequence.

    The rule transformers applies to prefix-LM models with a window: query position p sees key
    position j when
    ``p - j < window`` and (``j <= p`` or both lie in one image block). The masks are built
    by the first layer of a step and kept in ``layout.cache`` for the others.
    """
    masks = layout.cache.get(("window_masks", window))
    if masks is None:
        masks = layout.cache[("window_masks", window)] = _window_masks(layout, window, q.device)
    out = torch.zeros_like(q)
    q_off = k_off = 0
    for spec, visible in zip(layout.specs, masks, strict=True):
        q_len, kv_len = spec.num_queries, spec.kv_len
        if q_len:
            rows = q[q_off : q_off + q_len].transpose(0, 1)
            keys = k[k_off : k_off + kv_len].transpose(0, 1)
            values = v[k_off : k_off + kv_len].transpose(0, 1)
            attended = F.scaled_dot_product_attention(
                rows, keys, values, attn_mask=visible, scale=scale, enable_gqa=rows.shape[0] != keys.shape[0]
            )
            out[q_off : q_off + q_len] = attended.transpose(0, 1)
        q_off += q_len
        k_off += kv_len
    return out


def _window_masks(layout: MaskLayout, window: int, device: torch.device) -> list[torch.Tensor]:
    """Per sequence, the boolean [q_len, kv_len] mask of ``windowed_attention``."""
    masks = []
    for spec in layout.specs:
        query_pos = torch.arange(spec.kv_len - spec.num_queries, spec.kv_len, device=device)[:, None]
        key_pos = torch.arange(spec.kv_len, device=device)[None, :]
        visible = key_pos <= query_pos
        for start, end in spec.image_spans:
            visible |= (query_pos >= start) & (query_pos < end) & (key_pos >= start) & (key_pos < end)
        masks.append(visible & ((query_pos - key_pos) < window))
    return masks


class MixedMaskAttentionImpl(AttentionImpl[MixedMaskMetadata]):
    """Per layer: write new K/V into the paged cache, gather, attend with the step's layout."""

    def __init__(
        self,
        num_heads: int,
        head_size: int,
        scale: float,
        num_kv_heads: int | None = None,
        alibi_slopes: list[float] | None = None,
        sliding_window: int | None = None,
        kv_cache_dtype: str = "auto",
        logits_soft_cap: float | None = None,
        attn_type: str = AttentionType.DECODER,
        kv_sharing_target_layer_name: str | None = None,
        sinks: torch.Tensor | None = None,
        **unsupported: Any,
    ) -> None:
        refused = {
            "ALiBi": alibi_slopes is not None,
            "logit soft-capping": bool(logits_soft_cap),
            "attention sinks": sinks is not None,
            f"attention type {attn_type}": attn_type != AttentionType.DECODER,
            f"kv_cache_dtype {kv_cache_dtype}": kv_cache_dtype not in ("auto", "float16", "bfloat16"),
            f"options {sorted(unsupported)}": bool(unsupported),
        }
        if any(refused.values()):
            raise NotImplementedError(f"{BACKEND_NAME} does not support {[k for k, v in refused.items() if v]}")
        self.num_heads = num_heads
        self.head_size = head_size
        self.scale = float(scale)
        self.num_kv_heads = num_heads if num_kv_heads is None else num_kv_heads
        self.sliding_window = sliding_window
        self.kv_cache_dtype = kv_cache_dtype
        self.attn_type = attn_type
        self.kv_sharing_target_layer_name = kv_sharing_target_layer_name

    def do_kv_cache_update(
        self,
        layer: torch.nn.Module,
        key: torch.Tensor,
        value: torch.Tensor,
        kv_cache: torch.Tensor,
        slot_mapping: torch.Tensor,
    ) -> None:
        write_kv(kv_cache, key, value, slot_mapping)

    def forward(
        self,
        layer: AttentionLayer,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        kv_cache: torch.Tensor,
        attn_metadata: MixedMaskMetadata | None,
        output: torch.Tensor,
        output_scale: torch.Tensor | None = None,
        output_block_scale: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if output_scale is not None or output_block_scale is not None:
            raise NotImplementedError(f"{BACKEND_NAME} does not fuse output quantisation")
        if attn_metadata is None:  # vLLM's warm-up and profiling runs
            return output
        block_size, channels = kv_cache_block_size(kv_cache), kv_cache_channels(kv_cache)
        if block_size != attn_metadata.block_size or channels != 2 * self.head_size:
            raise RuntimeError(
                f"KV cache of shape {tuple(kv_cache.shape)} does not match block size "
                f"{attn_metadata.block_size} and head size {self.head_size}"
            )
        layout = attn_metadata.layout
        keys, values = gather_kv(kv_cache, attn_metadata.key_blocks, attn_metadata.key_offsets)
        queries = query[: layout.num_q_rows]
        keys, values = keys.to(queries.dtype), values.to(queries.dtype)
        window = self.sliding_window
        if window is not None and 0 < window < attn_metadata.max_seq_len:
            attended = windowed_attention(queries, keys, values, layout, self.scale, window)
        else:
            attended = attention(queries, keys, values, layout, scale=self.scale)
        output[: layout.num_q_rows].copy_(attended.reshape(output[: layout.num_q_rows].shape))
        return output
