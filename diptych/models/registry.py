"""Lazy registry of family adapters, keyed by the architecture name a checkpoint declares."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

from diptych.models.base import FamilyAdapter

# Architecture name → "module:Class". Modules are imported only when a checkpoint needs them.
_ADAPTERS: dict[str, str] = {
    "JanusForConditionalGeneration": "diptych.models.janus_pro.adapter:JanusProAdapter",
    "QwenImagePipeline": "diptych.models.qwen_image.adapter:QwenImageAdapter",
    "QwenImageEditPipeline": "diptych.models.qwen_image.adapter:QwenImageAdapter",
    "QwenImage21Pipeline": "diptych.models.qwen_image_21.adapter:QwenImage21Adapter",
}


# Our own vLLM models (architecture → "module:Class"), registered by the vLLM plugin in every
# vLLM process where vLLM has none of that name.
VLLM_MODELS: dict[str, str] = {
    "JanusForConditionalGeneration": "diptych.models.janus_pro.vllm_model:JanusForConditionalGeneration",
}

# `diptych make-tiny FAMILY` → "module:function(out_dir: Path, seed: int) -> Path".
TINY_FACTORIES: dict[str, str] = {
    "gemma3": "diptych.models.gemma3.tiny:write_tiny_gemma3",
    "janus-pro": "diptych.models.janus_pro.tiny:write_tiny_janus_pro",
    "qwen-image": "diptych.models.qwen_image.tiny:write_tiny_qwen_image",
    "qwen-image-edit": "diptych.models.qwen_image.tiny:write_tiny_qwen_image_edit",
    "qwen-image-2.1": "diptych.models.qwen_image_21.tiny:write_tiny_qwen_image_21",
}


def load_target(target: str):  # noqa: ANN201 - a module attribute of any kind
    """Import ``"module:attribute"`` and return the attribute."""
    module_name, _, attr = target.partition(":")
    return getattr(importlib.import_module(module_name), attr)


def architecture_of(model_dir: Path) -> str:
    """The architecture a checkpoint declares: diffusers' ``model_index.json`` or transformers' ``config.json``."""
    index = model_dir / "model_index.json"
    if index.is_file():
        return str(json.loads(index.read_text())["_class_name"])
    config = model_dir / "config.json"
    if config.is_file():
        architectures = json.loads(config.read_text()).get("architectures") or []
        if architectures:
            return str(architectures[0])
    raise ValueError(f"{model_dir} is not a checkpoint directory: no model_index.json or config.json with architectures")


def load_adapter(model_dir: Path) -> FamilyAdapter:
    architecture = architecture_of(model_dir)
    target = _ADAPTERS.get(architecture)
    if target is None:
        known = ", ".join(sorted(_ADAPTERS))
        raise ValueError(f"architecture {architecture!r} of {model_dir} is not supported; supported: {known}")
    return load_target(target)(model_dir)
