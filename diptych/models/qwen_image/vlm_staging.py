"""Stage the VLM of a Qwen-Image checkpoint as a directory vLLM can load.

A Qwen-Image checkpoint (diffusers layout) keeps its Qwen2.5-VL in pieces: weights and
config in ``text_encoder/``, the tokenizer in ``tokenizer/`` and, for the Edit variants,
the processor in ``processor/``. vLLM wants one transformers-style directory. Staging
builds it from symlinks (no weights are copied) under ``staging_root``; the only files it
writes are the ones a text-to-image checkpoint lacks (image preprocessor config, chat
template), derived from the text encoder's own config.
"""

from __future__ import annotations

import json
from pathlib import Path

from diptych.models.qwen_image.chat_template import CHAT_TEMPLATE
from diptych.models.staging import files_of, publish

# Qwen2.5-VL's published image preprocessing (CLIP statistics, 4 to 16384 merged tokens).
_DEFAULT_MIN_PIXELS = 56 * 56
_DEFAULT_MAX_PIXELS = 28 * 28 * 16384
_CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
_CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


def stage_for_vllm(model_dir: Path, staging_root: Path) -> Path:
    """Return a directory vLLM can load for the checkpoint's VLM; idempotent and safe to race."""
    model_dir = Path(model_dir).resolve()
    if not (model_dir / "text_encoder" / "config.json").is_file():
        raise ValueError(f"{model_dir} has no text_encoder/config.json: not a Qwen-Image checkpoint")
    links, generated = _plan(model_dir)
    return publish(model_dir, staging_root, links, generated)


def _plan(model_dir: Path) -> tuple[dict[str, Path], dict[str, str]]:
    """File name → symlink source, and file name → generated text, for the staged directory."""
    # Later folders win: processor/ carries the tokenizer too, plus the preprocessor configs.
    links = files_of(model_dir, ("tokenizer", "processor", "text_encoder"))
    generated: dict[str, str] = {}
    if "preprocessor_config.json" not in links:
        generated["preprocessor_config.json"] = _default_preprocessor_config(model_dir / "text_encoder" / "config.json")
    if "chat_template.jinja" not in links and not _tokenizer_has_template(links.get("tokenizer_config.json")):
        generated["chat_template.jinja"] = CHAT_TEMPLATE
    return links, generated


def _default_preprocessor_config(config_path: Path) -> str:
    """Qwen2.5-VL's image preprocessing, with patch and merge sizes from the vision config."""
    vision = json.loads(config_path.read_text()).get("vision_config", {})
    config = {
        "image_processor_type": "Qwen2VLImageProcessor",
        "processor_class": "Qwen2_5_VLProcessor",
        "min_pixels": _DEFAULT_MIN_PIXELS,
        "max_pixels": _DEFAULT_MAX_PIXELS,
        "patch_size": vision.get("patch_size", 14),
        "temporal_patch_size": vision.get("temporal_patch_size", 2),
        "merge_size": vision.get("spatial_merge_size", 2),
        "image_mean": _CLIP_MEAN,
        "image_std": _CLIP_STD,
    }
    return json.dumps(config, indent=2, sort_keys=True) + "\n"


def _tokenizer_has_template(tokenizer_config: Path | None) -> bool:
    if tokenizer_config is None:
        return False
    return bool(json.loads(tokenizer_config.read_text()).get("chat_template"))
