"""Plain frozen configuration the engines receive (derived from :class:`diptych.settings.Settings`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Limits:
    """Request limits; anything past them is refused with a 4xx before it reaches a model."""

    max_image_side: int
    max_n: int
    max_steps: int
    max_prompt_tokens: int
    max_output_tokens: int
    max_images_per_request: int
    queue_depth: int
    request_timeout_s: float


@dataclass(frozen=True)
class EngineConfig:
    model_dir: Path
    served_name: str
    device: str
    cache_dir: Path
    kv_cache_gib: float
    max_model_len: int
    max_num_seqs: int
    ar_startup_timeout_s: float
    limits: Limits
