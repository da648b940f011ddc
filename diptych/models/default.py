"""The embedded default checkpoint served when no ``--model`` is given.

Until the trained micro model ships, this is a tiny random Qwen-Image-Edit checkpoint
written on first start: all three capabilities work, and its outputs are noise.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

logger = logging.getLogger(__name__)

DEFAULT_NAME = "diptych-tiny-qwen-image-edit"


def default_checkpoint(cache_dir: Path) -> Path:
    target = cache_dir / "models" / DEFAULT_NAME
    if (target / "model_index.json").is_file():
        return target
    from diptych.models.qwen_image.tiny import write_tiny_qwen_image_edit

    logger.info("writing the default tiny checkpoint to %s", target)
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)  # left by an interrupted first start
    write_tiny_qwen_image_edit(partial, seed=0)
    partial.rename(target)
    return target
