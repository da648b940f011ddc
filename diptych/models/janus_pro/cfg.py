"""Classifier-free guidance inside vLLM's batch: a vLLM v1 logits processor for Janus-Pro.

The Janus vLLM model returns, per row, ``V`` text logits followed by the image-code logits
(see ``vllm_model.py``). This processor, which sees the whole batch before sampling, does
two things per step:

1. **Which head a row samples from.** A request without Janus image arguments is text: its
   code columns are ``-inf``. An image request's text columns are ``-inf``.
2. **Guidance across a pair.** An image is two vLLM requests, the conditional prompt and
   its unconditional twin, tagged with the same ``pair`` id in
   ``SamplingParams.extra_args[EXTRA_KEY]``. When both rows are in this step's batch with
   equally many output tokens, their code logits become ``u + s·(c − u)`` in *both* rows.
   Both requests carry the same seed and sampling options, so vLLM's sampler (greedy, or
   seeded Gumbel-max per row) picks the same token for both: the unconditional sequence
   consumes the token the guided distribution chose, as in the reference.

**Guarantee.** Guidance is applied only to a complete, aligned pair. vLLM schedules the
two requests independently, so a pair can in principle be split (one member admitted or
preempted without the other, see ``docs/architecture.md``); a row whose partner is missing
or at another position is forced to sample ``abort_token_id`` (the EOS token, a stop
token of image requests that the code head can never produce). The request then ends early,
and the caller (:mod:`diptych.models.janus_pro.image_tokens`) sees fewer tokens than the
image needs and runs the pair again. An image is therefore never built from unguided or
mis-paired logits; a split costs a retry, not a wrong image. This relies on vLLM v1 not
sampling partial prefills usefully: the engine runs with chunked prefill disabled, so a
row in the batch is either the last step of a whole prefill or a decode step, and equal
output lengths mean equal positions.

Runs in vLLM's worker process: it imports vLLM and torch, and keeps its state per batch row
(vLLM's logits-processor contract), never per request elsewhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from vllm.v1.sample.logits_processor import (
    BatchUpdate,
    LogitsProcessor,
    MoveDirectionality,
)

from diptych.models.janus_pro.image_tokens import EXTRA_KEY

if TYPE_CHECKING:
    from vllm import SamplingParams
    from vllm.config import VllmConfig



@dataclass
class _Row:
    pair: str | None  # None: a text request
    cond: bool
    scale: float
    output_ids: list[int]  # vLLM's live list of the request's output tokens


def image_args(params: SamplingParams) -> dict[str, Any] | None:
    extra = params.extra_args or {}
    value = extra.get(EXTRA_KEY)
    return value if isinstance(value, dict) else None


class JanusLogitsProcessor(LogitsProcessor):
    @classmethod
    def validate_params(cls, sampling_params: SamplingParams) -> None:
        args = image_args(sampling_params)
        if args is None:
            return
        if args.get("role") not in ("cond", "uncond", "single") or not isinstance(args.get("pair"), str):
            raise ValueError(f"bad {EXTRA_KEY} arguments: {args!r}")

    def __init__(self, vllm_config: VllmConfig, device: torch.device, is_pin_memory: bool) -> None:
        hf_config = vllm_config.model_config.hf_config
        self.text_vocab_size = int(hf_config.text_config.vocab_size)
        self.abort_token_id = int(hf_config.text_config.eos_token_id)
        self._rows: dict[int, _Row] = {}

    def is_argmax_invariant(self) -> bool:
        return False  # it changes which token greedy decoding picks

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        if batch_update is None:
            return
        for index in batch_update.removed:
            self._rows.pop(index, None)
        for index, params, _prompt_ids, output_ids in batch_update.added:
            args = image_args(params)
            if args is None:
                self._rows[index] = _Row(None, True, 1.0, output_ids)
            else:
                role = args["role"]
                pair = None if role == "single" else args["pair"]
                self._rows[index] = _Row(pair or "", role != "uncond", float(args.get("scale", 1.0)), output_ids)
        for a, b, direction in batch_update.moved:
            row_a, row_b = self._rows.pop(a, None), self._rows.pop(b, None)
            if row_a is not None:
                self._rows[b] = row_a
            if direction == MoveDirectionality.SWAP and row_b is not None:
                self._rows[a] = row_b

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        if not self._rows:
            return logits
        v = self.text_vocab_size
        text_rows = [i for i, r in self._rows.items() if r.pair is None and i < logits.shape[0]]
        image_rows = [i for i, r in self._rows.items() if r.pair is not None and i < logits.shape[0]]
        if text_rows:
            logits[text_rows, v:] = float("-inf")
        if not image_rows:
            return logits
        logits[image_rows, :v] = float("-inf")
        halves: dict[str, dict[bool, int]] = {}
        for i in image_rows:
            row = self._rows[i]
            if row.pair:  # "" is an unguided single
                halves.setdefault(row.pair, {})[row.cond] = i
        broken: list[int] = []
        for members in halves.values():
            c, u = members.get(True), members.get(False)
            if c is None or u is None or len(self._rows[c].output_ids) != len(self._rows[u].output_ids):
                broken.extend(i for i in (c, u) if i is not None)
                continue
            scale = self._rows[c].scale
            cond, uncond = logits[c, v:], logits[u, v:]
            mixed = uncond + scale * (cond - uncond)
            logits[c, v:] = mixed
            logits[u, v:] = mixed
        if broken:
            logits[broken, :] = float("-inf")
            logits[broken, self.abort_token_id] = 0.0
        return logits
