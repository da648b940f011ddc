"""Loading the parts of a Qwen-Image / Qwen-Image-Edit checkpoint in diffusers' layout.

The layout is read from ``model_index.json``: ``transformer/``, ``vae/``, ``scheduler/``,
``text_encoder/``, ``tokenizer/`` and, for the edit pipeline, ``processor/``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from diptych.models.qwen_image.schedule import ShiftConfig

logger = logging.getLogger(__name__)

GENERATE_PIPELINE = "QwenImagePipeline"
EDIT_PIPELINE = "QwenImageEditPipeline"


@dataclass(frozen=True)
class QwenImageComponents:
    """The loaded modules of one checkpoint, in eval mode on one device."""

    transformer: Any  # QwenImageTransformer2DModel
    vae: Any  # AutoencoderKLQwenImage
    text_encoder: Any  # Qwen2_5_VLForConditionalGeneration
    tokenizer: Any  # Qwen2Tokenizer
    processor: Any | None  # Qwen2VLProcessor, edit checkpoints only
    shift: ShiftConfig
    is_edit: bool
    dtype: torch.dtype
    device: torch.device

    @property
    def vae_scale_factor(self) -> int:
        """Pixels per latent cell: 2 per temporal-downsample stage, as the pipeline computes it."""
        return 2 ** len(self.vae.temperal_downsample)

    @property
    def latent_channels(self) -> int:
        return int(self.vae.config.z_dim)


def read_model_index(model_dir: Path) -> dict[str, Any]:
    index_path = model_dir / "model_index.json"
    if not index_path.is_file():
        raise ValueError(f"{model_dir} has no model_index.json; not a diffusers checkpoint")
    index: dict[str, Any] = json.loads(index_path.read_text())
    name = index.get("_class_name")
    if name not in {GENERATE_PIPELINE, EDIT_PIPELINE}:
        raise ValueError(f"{model_dir} declares pipeline {name!r}; expected {GENERATE_PIPELINE} or {EDIT_PIPELINE}")
    return index


def load_components(model_dir: Path, device: str | torch.device, dtype: torch.dtype) -> QwenImageComponents:
    # Imported here so that importing the package (e.g. for the registry) stays cheap.
    from diffusers import AutoencoderKLQwenImage, FlowMatchEulerDiscreteScheduler, QwenImageTransformer2DModel
    from transformers import Qwen2_5_VLForConditionalGeneration, Qwen2Tokenizer

    index = read_model_index(model_dir)
    is_edit = index["_class_name"] == EDIT_PIPELINE
    target = torch.device(device)

    transformer = QwenImageTransformer2DModel.from_pretrained(model_dir / "transformer", torch_dtype=dtype)
    if transformer.config.guidance_embeds:
        raise ValueError(f"{model_dir}: guidance-distilled transformers (guidance_embeds=true) are not supported")
    vae = AutoencoderKLQwenImage.from_pretrained(model_dir / "vae", torch_dtype=dtype)
    text_encoder = Qwen2_5_VLForConditionalGeneration.from_pretrained(model_dir / "text_encoder", dtype=dtype)
    tokenizer = Qwen2Tokenizer.from_pretrained(model_dir / "tokenizer")
    processor = None
    if is_edit:
        from transformers import Qwen2VLProcessor

        from diptych import compat

        # Qwen2VLProcessor's video slot wants torchvision; compat routes it to the PIL twins.
        compat.install()
        processor = Qwen2VLProcessor.from_pretrained(model_dir / "processor")
    scheduler_config = FlowMatchEulerDiscreteScheduler.load_config(model_dir / "scheduler")

    for module in (transformer, vae, text_encoder):
        module.to(target).eval()
    logger.info("loaded %s from %s on %s (%s)", index["_class_name"], model_dir, target, dtype)
    return QwenImageComponents(
        transformer=transformer,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        processor=processor,
        shift=ShiftConfig.from_scheduler_config(scheduler_config),
        is_edit=is_edit,
        dtype=dtype,
        device=target,
    )
