"""Stage the Qwen3-VL of a Qwen-Image 2.1 checkpoint as a directory vLLM can load.

``QwenImage21Pipeline`` keeps weights and config in ``text_encoder/`` and the whole
``Qwen3VLProcessor`` (tokenizer, image and video preprocessor configs, chat template) in
``processor/``; there is no ``tokenizer/`` folder. The staged directory links both: nothing
is generated, since a 2.1 checkpoint always ships its processor.
"""

from __future__ import annotations

from pathlib import Path

from diptych.models.staging import files_of, publish

_REQUIRED = ("text_encoder/config.json", "processor/tokenizer_config.json", "processor/preprocessor_config.json")


def stage_for_vllm(model_dir: Path, staging_root: Path) -> Path:
    """Return a directory vLLM can load for the checkpoint's Qwen3-VL; idempotent and safe to race."""
    model_dir = Path(model_dir).resolve()
    missing = [name for name in _REQUIRED if not (model_dir / name).is_file()]
    if missing:
        raise ValueError(f"{model_dir} lacks {missing}: not a Qwen-Image 2.1 checkpoint")
    # text_encoder/ last: its config.json is the model's (the processor folder has none, but be sure).
    return publish(model_dir, staging_root, files_of(model_dir, ("processor", "text_encoder")), {})
