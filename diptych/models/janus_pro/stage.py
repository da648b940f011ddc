"""Janus-Pro's AR image stage: one guidance pair of vLLM requests per image (see ``cfg.py``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from diptych.models.base import ARImageJob, ARSequence
from diptych.models.janus_pro import image_tokens as it
from diptych.types import ImageRequest


class JanusImageStage:
    def __init__(self, tokenizer: Any, spec: it.TokenSpec) -> None:
        self._tokenizer = tokenizer
        self.spec = spec

    def engine_options(self, max_model_len: int) -> Mapping[str, Any]:
        return {
            "logits_processors": [it.PROCESSOR_PATH],
            # Admits a pair's two requests together (an AsyncScheduler subclass).
            "scheduler_cls": it.SCHEDULER_PATH,
            "async_scheduling": True,
            # A pair's rows are aligned only if no prefill is split across steps (cfg.py).
            "enable_chunked_prefill": False,
            "max_num_batched_tokens": max(max_model_len, 8192),
        }

    def plan(self, request: ImageRequest) -> list[ARImageJob]:
        if request.is_edit or request.mask is not None:
            raise ValueError("Janus-Pro cannot edit images (it supports: understand, generate)")
        if request.temperature < 0 or request.top_k < 0 or not 0 < request.top_p <= 1:
            raise ValueError(
                f"temperature {request.temperature}, top_k {request.top_k}, top_p {request.top_p}: "
                "need temperature >= 0, top_k >= 0, 0 < top_p <= 1"
            )
        cond = it.conditional_ids(self._tokenizer, request.prompt)
        uncond = (
            it.conditional_ids(self._tokenizer, request.negative_prompt) if request.negative_prompt is not None else None
        )
        jobs = []
        for index in range(request.n):
            # With a seed, image i uses seed + i: n distinct images, each reproducible alone.
            seed = None if request.seed is None else (request.seed + index) % 2**63
            pair = it.pair_request(
                cond,
                self.spec,
                pair_id=f"{request.request_id}/{index}",
                guidance_scale=request.guidance_scale,
                temperature=request.temperature,
                top_k=request.top_k,
                top_p=request.top_p,
                seed=seed,
                uncond=uncond,
            )
            jobs.append(
                ARImageJob(tuple(ARSequence(tuple(p), s) for p, s in zip(pair.prompts, pair.sampling, strict=True)))
            )
        return jobs

    def codes(self, token_ids: Sequence[int]) -> tuple[int, ...] | None:
        codes = it.codes_of(list(token_ids), self.spec)
        return None if codes is None else tuple(codes)
