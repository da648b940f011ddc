"""Family (b): Qwen-Image and Qwen-Image-Edit in the diffusers layout.

The Qwen2.5-VL in ``text_encoder/`` answers questions (served by vLLM) and encodes
prompts for the MMDiT in ``transformer/``; edit checkpoints also put the source image
through the VLM and the VAE.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from functools import cached_property
from pathlib import Path
from typing import Any, ClassVar

from diptych.models.base import Capabilities, ChatPrompt, FlowRunner, WeightFiles, diffusers_vlm_weight_files
from diptych.models.qwen_image.source import DEFAULT_SOURCE_AREA, SOURCE_AREA_KEY
from diptych.types import ChatMessage

_EDIT_PIPELINES = frozenset({"QwenImageEditPipeline"})
# The pipelines' default true_cfg_scale. A checkpoint may declare its own in model_index.json
# under GUIDANCE_SCALE_KEY (diffusers ignores keys that start with "_"), as it declares its
# edit source area: the shipped micro model draws best at a lower scale than the public ones.
DEFAULT_GUIDANCE_SCALE = 4.0
GUIDANCE_SCALE_KEY = "_diptych_default_guidance_scale"
# Likewise the side of the square picture drawn when a request names no size: a checkpoint
# trained at one small size (the micro model, 64) draws noise at the public default of 256.
DEFAULT_SIDE = 256
IMAGE_SIDE_KEY = "_diptych_default_image_side"


class QwenImageAdapter:
    family: ClassVar[str] = "qwen-image"

    def __init__(self, model_dir: Path) -> None:
        self.model_dir = model_dir
        index = json.loads((model_dir / "model_index.json").read_text())
        self.pipeline_class = str(index["_class_name"])
        missing = [c for c in ("text_encoder", "tokenizer", "transformer", "vae", "scheduler") if c not in index]
        if missing:
            raise ValueError(f"{model_dir}/model_index.json lacks components {missing}")
        self.is_edit = self.pipeline_class in _EDIT_PIPELINES
        self.source_area = int(index.get(SOURCE_AREA_KEY, DEFAULT_SOURCE_AREA))
        if self.source_area <= 0:
            raise ValueError(f"{model_dir}/model_index.json: {SOURCE_AREA_KEY} must be positive, got {self.source_area}")
        self.default_guidance_scale = _declared_guidance(index, model_dir)
        self.default_side = index.get(IMAGE_SIDE_KEY, DEFAULT_SIDE)
        self._staged: Path | None = None

    def capabilities(self) -> Capabilities:
        vae_config = json.loads((self.model_dir / "vae" / "config.json").read_text())
        # Latents are 2x2-patchified after the VAE's 8x downsampling: sides are multiples of 16.
        multiple = 2 ** len(vae_config.get("temperal_downsample", [0, 0, 0])) * 2
        side = self.default_side
        if isinstance(side, bool) or not isinstance(side, int) or side < multiple * 2 or side % multiple:
            raise ValueError(f"{self.model_dir}/model_index.json: {IMAGE_SIDE_KEY} must be a multiple of {multiple} "
                             f"of at least {multiple * 2}, got {side!r}")
        return Capabilities(
            understand=True,
            generate=True,  # an edit checkpoint also generates from text alone (no source latents)
            edit=self.is_edit,
            min_side=multiple * 2,
            max_side=2048,
            size_multiple=multiple,
            default_size=(side, side),
            max_source_images=1,
            supports_mask=False,
            default_steps=20,
            default_guidance_scale=self.default_guidance_scale,
        )

    def prepare_ar_model(self, staging_root: Path) -> Path:
        from diptych.models.qwen_image.vlm_staging import stage_for_vllm

        self._staged = stage_for_vllm(self.model_dir, staging_root)
        return self._staged

    @cached_property
    def _processor(self) -> Any:
        from diptych import compat

        compat.install()
        from transformers import AutoProcessor

        # The staged directory has a processor even for text-to-image checkpoints (which ship
        # only a tokenizer): the one vLLM uses, so prompts are rendered and counted alike.
        source = self._staged or (self.model_dir / "processor" if (self.model_dir / "processor").is_dir()
                            else self.model_dir / "tokenizer")
        return AutoProcessor.from_pretrained(source)

    def render_chat(self, messages: tuple[ChatMessage, ...]) -> ChatPrompt:
        from diptych.models.qwen_image.chat import render_chat

        return render_chat(self._processor, messages)

    def count_prompt_tokens(self, prompt: ChatPrompt | str) -> int:
        from diptych.models.qwen_image.chat import count_tokens

        return count_tokens(self._processor, prompt)

    def checkpoint_dtype(self) -> str | None:
        # diffusers' component configs carry no dtype; the text encoder's transformers config does,
        # and public checkpoints store every component in it.
        config = json.loads((self.model_dir / "text_encoder" / "config.json").read_text())
        return config.get("dtype") or config.get("torch_dtype")

    def build_flow_runner(self, device: str, dtype: str, cache_bytes: int = 0) -> FlowRunner[Any]:
        import torch

        from diptych.models.qwen_image.flow import QwenImageFlowRunner

        return QwenImageFlowRunner(self.model_dir, device, dtype=getattr(torch, dtype), source_area=self.source_area,
                                   cache_bytes=cache_bytes)

    def weight_files(self) -> Mapping[str, tuple[WeightFiles, ...]]:
        # The Qwen2.5-VL twice: staged for vLLM (vlm_staging.py), and for prompts (components.py).
        return diffusers_vlm_weight_files(self.model_dir)


def _declared_guidance(index: dict[str, Any], model_dir: Path) -> float:
    value = index.get(GUIDANCE_SCALE_KEY, DEFAULT_GUIDANCE_SCALE)
    # bool is an int to Python, and true is no scale.
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{model_dir}/model_index.json: {GUIDANCE_SCALE_KEY} must be a number >= 0 "
                         f"(1 or less turns guidance off), got {value!r}")
    return float(value)
