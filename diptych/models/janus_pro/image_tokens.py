"""Janus-Pro image generation as vLLM requests: the CFG pair's prompts and sampling options.

Each image is two requests that :mod:`diptych.models.janus_pro.cfg` pairs inside vLLM's
batch: the conditional prompt ``BOS <|User|>: prompt\\n\\n<|Assistant|>: <begin_of_image>``
and its unconditional twin, the same tokens with every one but BOS and ``<begin_of_image>``
replaced by the pad token (transformers' ``generate(generation_mode="image")``; the
deepseek-ai/Janus reference pads ``tokens[1:-1]``, the same positions). Both get the same
seed and sampling options, ``num_image_tokens`` new tokens, and the EOS token as their
only stop token (the guided head never produces it; the CFG processor forces it when a
pair is split, so a short result means "run again").

Generated ids are offset by the text vocabulary ``V`` (code ``c`` is token ``V + c``).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from diptych.models.janus_pro import chat_format as cf

# Where the engine-side pieces live (imported by vLLM's processes, never by the gateway).
EXTRA_KEY = "diptych_janus_image"  # SamplingParams.extra_args[EXTRA_KEY] = {"pair", "role", "scale"}
PROCESSOR_PATH = "diptych.models.janus_pro.cfg:JanusLogitsProcessor"
SCHEDULER_PATH = "diptych.models.janus_pro.pairing.PairingScheduler"


@dataclass(frozen=True)
class TokenSpec:
    """What the AR engine needs to know about a checkpoint's image tokens (picklable, plain)."""

    text_vocab_size: int
    num_image_tokens: int
    bos_id: int
    boi_id: int
    pad_id: int
    eos_id: int


@dataclass(frozen=True)
class PairRequest:
    """One image: its (cond, uncond) prompt token ids and the vLLM sampling arguments of each."""

    prompts: tuple[list[int], ...]  # (cond, uncond), or (cond,) without guidance
    sampling: tuple[dict[str, Any], ...]


def conditional_ids(tokenizer: Any, prompt: str) -> list[int]:
    return list(tokenizer(cf.generation_prompt(prompt) + cf.BOI)["input_ids"])


def unconditional_ids(cond: list[int], spec: TokenSpec) -> list[int]:
    return [t if t in (spec.bos_id, spec.boi_id) else spec.pad_id for t in cond]


def pair_request(
    cond: list[int],
    spec: TokenSpec,
    *,
    pair_id: str,
    guidance_scale: float,
    temperature: float,
    top_k: int,
    top_p: float,
    seed: int | None,
    uncond: list[int] | None = None,
) -> PairRequest:
    """The requests of one image. ``seed`` None draws one: both halves must share it.

    ``uncond``: the unconditional prompt's ids (a negative prompt); by default the padded twin of ``cond``.
    """
    seed = random.getrandbits(31) if seed is None else seed
    common = {
        "max_tokens": spec.num_image_tokens,
        "min_tokens": 0,
        "temperature": temperature,
        "top_k": top_k,
        "top_p": top_p,
        "seed": seed,
        "stop_token_ids": [spec.eos_id],
        "ignore_eos": False,
        "detokenize": False,
        "skip_special_tokens": False,
    }
    if guidance_scale <= 1.0:  # s = 1 is the conditional logits alone: no twin needed
        single = {**common, "extra_args": {EXTRA_KEY: {"pair": pair_id, "role": "single"}}}
        return PairRequest((cond,), (single,))
    roles = []
    for role in ("cond", "uncond"):
        roles.append({**common, "extra_args": {EXTRA_KEY: {"pair": pair_id, "role": role, "scale": guidance_scale}}})
    return PairRequest((cond, uncond if uncond is not None else unconditional_ids(cond, spec)), tuple(roles))


def codes_of(token_ids: list[int], spec: TokenSpec) -> list[int] | None:
    """The image codes of a finished request, or None if it ended early (a split pair: retry)."""
    if len(token_ids) != spec.num_image_tokens or any(t < spec.text_vocab_size for t in token_ids):
        return None
    return [t - spec.text_vocab_size for t in token_ids]
