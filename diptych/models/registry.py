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
}


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
    module_name, class_name = target.split(":")
    adapter_cls = getattr(importlib.import_module(module_name), class_name)
    return adapter_cls(model_dir)
