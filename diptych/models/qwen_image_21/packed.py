"""One transformer forward over the branches of many requests, packed into one token sequence.

Every branch of every image in a step is one sequence of the pack. A branch's prefix is a
chain of :class:`PrefixKV` chunks (e.g. the text and references shared with other requests,
then its own instruction). The sequence runs the tokens of the chunks that have no keys and
values yet (the prefill: block-causal attention over text and condition images) and its
target tokens, which attend every chunk and their own block. Prefills and targets over stored
prefixes share one forward, so a newly admitted request's prefill joins the step the running
ones take.

**diffusers' blocks, our attention.** The blocks of ``QwenImage21Transformer2DModel`` run
unchanged; :class:`PackedAttnProcessor` takes the place of their attention processor. The
pack is laid out on the *batch* axis, one token per row (``[tokens, 1, dim]``): a block
modulates every row with that row's modulation, so each token gets its own, from its
branch's timestep (target tokens) or from ``t = 0`` (prefix tokens, as ``causal_condition``
has it), with no change to the block. The processor projects, normalises and rotates the
tokens as diffusers' processor does, with each token's own rotary position, stores the keys
and values of prefixes being filled, gathers each sequence's keys (stored prefix, then its
new tokens) and calls ``diptych.kernels.attention`` once over the pack with a
:class:`~diptych.kernels.MaskLayout`: no L×L mask exists.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from diffusers.models.transformers.transformer_qwenimage21 import apply_rotary_emb_qwen

from diptych.kernels import MaskLayout, attention
from diptych.models.qwen_image_21.sequence import BranchLayout


@dataclass(eq=False)
class PrefixKV:
    """The keys and values of one chunk of a prefix in every block, post-rotary, ``[length, heads, head_dim]`` each.

    Filled by the first forward that runs the chunk's tokens (from ``inputs``), then read by
    every later one. Shared by every branch whose prefix starts with the same tokens: the
    images of a request, its guidance branches up to the last reference, other requests.
    ``extra`` is what the family keeps beside it to extend it (e.g. the VLM's own cache).
    """

    length: int
    inputs: torch.Tensor | None  # [length, inner_dim], dropped once the chunk is complete
    keys: list[torch.Tensor | None] = field(default_factory=list)
    values: list[torch.Tensor | None] = field(default_factory=list)
    complete: bool = False
    extra: Any = None
    # Fixed once complete; counted then, since the cache and /metrics ask at every step.
    _complete_nbytes: int | None = field(default=None, init=False, repr=False)

    @property
    def nbytes(self) -> int:
        if self._complete_nbytes is not None:
            return self._complete_nbytes
        tensors = [t for t in (*self.keys, *self.values, self.inputs) if t is not None]
        return sum(t.numel() * t.element_size() for t in tensors) + int(getattr(self.extra, "nbytes", 0))

    def store(self, layer: int, key: torch.Tensor, value: torch.Tensor) -> None:
        while len(self.keys) <= layer:
            self.keys.append(None)
            self.values.append(None)
        self.keys[layer], self.values[layer] = key, value

    def finish(self) -> None:
        """Mark the prefix complete (called after the forward that filled it succeeded)."""
        self.complete, self.inputs = True, None
        self._complete_nbytes = self.nbytes


@dataclass(frozen=True, eq=False)
class PackedRow:
    """One sequence of the pack: a branch of one image at its current step.

    It reads ``prefix[:fills_from]`` (stored, or filled by another row of the same pack) and
    runs the tokens of ``prefix[fills_from:]``, storing their keys and values, then its target.
    """

    layout: BranchLayout
    prefix: tuple[PrefixKV, ...]  # chunks in order; their lengths sum to layout.prefix_len
    latents: torch.Tensor  # [target_len, C]
    timestep: torch.Tensor  # scalar, in [0, 1] as the transformer takes it
    fills_from: int

    @property
    def read(self) -> tuple[PrefixKV, ...]:
        return self.prefix[: self.fills_from]

    @property
    def filled(self) -> tuple[PrefixKV, ...]:
        return self.prefix[self.fills_from :]

    @property
    def read_len(self) -> int:
        return sum(chunk.length for chunk in self.read)

    @property
    def new_len(self) -> int:
        """Tokens this row puts through the blocks: its chunks to fill, then its target."""
        return self.layout.length - self.read_len


@dataclass(frozen=True, eq=False)
class PackContext:
    """What every layer's attention needs about the pack; handed to the processors as ``attention_mask``."""

    rows: tuple[PackedRow, ...]
    starts: tuple[int, ...]  # first token of each row in the pack
    layout: MaskLayout
    backend: str

    def keys_and_values(
        self, layer: int, keys: torch.Tensor, values: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Store the prefixes this pack fills, then each sequence's keys: its stored prefix, then its new tokens."""
        for row, start in zip(self.rows, self.starts, strict=True):
            for chunk in row.filled:
                end = start + chunk.length
                # clone(): a view would keep the whole pack's keys alive for every later step.
                chunk.store(layer, keys[start:end].clone(), values[start:end].clone())
                start = end
        key_parts: list[torch.Tensor] = []
        value_parts: list[torch.Tensor] = []
        for row, start in zip(self.rows, self.starts, strict=True):
            for chunk in row.read:
                if len(chunk.keys) <= layer or chunk.keys[layer] is None:
                    raise RuntimeError(f"prefix keys of layer {layer} are missing: no row fills them")
                key_parts.append(chunk.keys[layer])  # type: ignore[arg-type]
                value_parts.append(chunk.values[layer])  # type: ignore[arg-type]
            key_parts.append(keys[start : start + row.new_len])
            value_parts.append(values[start : start + row.new_len])
        return torch.cat(key_parts), torch.cat(value_parts)


class PackedAttnProcessor:
    """The attention of one block over a pack (see the module docstring)."""

    def __init__(self, layer: int) -> None:
        self.layer = layer

    def __call__(
        self,
        attn: Any,
        hidden_states: torch.Tensor,
        attention_mask: Any = None,
        rotary_emb: torch.Tensor | None = None,
        **_: Any,
    ) -> torch.Tensor:
        context = attention_mask
        if not isinstance(context, PackContext) or rotary_emb is None:
            raise TypeError("PackedAttnProcessor runs only inside packed_forward")
        tokens = hidden_states[:, 0]
        head_dim = attn.inner_dim // attn.heads
        query = attn.to_q(tokens).unflatten(-1, (-1, head_dim))
        key = attn.to_k(tokens).unflatten(-1, (-1, head_dim))
        value = attn.to_v(tokens).unflatten(-1, (-1, head_dim))
        query = attn.norm_q(query).to(value.dtype)
        key = attn.norm_k(key).to(value.dtype)
        # diffusers' rotary over [batch, seq, heads, dim] with a [seq, dim/2] table: the pack is one sequence here.
        query = apply_rotary_emb_qwen(query[None], rotary_emb, use_real=False)[0]
        key = apply_rotary_emb_qwen(key[None], rotary_emb, use_real=False)[0]
        keys, values = context.keys_and_values(self.layer, key, value)
        out = attention(query, keys, values, context.layout, backend=context.backend)
        out = attn.to_out[0](out.flatten(1, 2).type_as(query))
        return attn.to_out[1](out)[:, None]


def install_packed_attention(transformer: Any) -> None:
    """Give every block of ``transformer`` a :class:`PackedAttnProcessor`; it then runs only through :func:`packed_forward`."""
    for layer, block in enumerate(transformer.transformer_blocks):
        block.attn.set_processor(PackedAttnProcessor(layer))


def packed_forward(transformer: Any, rows: Sequence[PackedRow], backend: str = "auto") -> list[torch.Tensor]:
    """The transformer's output on each row's target tokens, ``[target_len, C]`` each, in order."""
    rows = tuple(rows)
    dtype = rows[0].latents.dtype
    targets = transformer.img_in(torch.cat([row.latents for row in rows]))
    parts, rotary, modulation_rows, starts = [], [], [], []
    offset = target_offset = 0
    zero_row = len(rows)  # the t = 0 row of the modulation, after one row per branch
    for index, row in enumerate(rows):
        starts.append(offset)
        layout = row.layout
        for chunk in row.filled:
            if chunk.inputs is None:
                raise RuntimeError("a prefix chunk to fill has no inputs left")
            parts.append(chunk.inputs)
            modulation_rows.append(torch.full((chunk.length,), zero_row, dtype=torch.long))
            offset += chunk.length
        rotary.append(layout.rotary[row.read_len :])
        parts.append(targets[target_offset : target_offset + layout.target_len])
        modulation_rows.append(torch.full((layout.target_len,), index, dtype=torch.long))
        offset += layout.target_len
        target_offset += layout.target_len

    hidden = torch.cat(parts)[:, None]
    device = hidden.device
    timesteps = torch.stack([row.timestep for row in rows]).to(dtype)
    timesteps = torch.cat([timesteps, timesteps.new_zeros(1)])
    temb = transformer.time_text_embed(timesteps, hidden)
    token_rows = torch.cat(modulation_rows).to(device)
    token_temb = temb[token_rows]
    token_modulation = transformer.modulation(temb)[token_rows]
    token_rotary = torch.cat(rotary)
    layout = MaskLayout.build([row.layout.spec(row.read_len) for row in rows], device=device)
    context = PackContext(rows, tuple(starts), layout, backend)

    for block in transformer.transformer_blocks:
        hidden = block(
            hidden_states=hidden,
            modulation=token_modulation,
            rotary_emb=token_rotary,
            attention_mask=context,
        )
    output = transformer.proj_out(transformer.norm_out(hidden, token_temb))[:, 0]

    results = []
    for row, start in zip(rows, starts, strict=True):
        first = start + row.new_len - row.layout.target_len
        results.append(output[first : first + row.layout.target_len])
    return results
