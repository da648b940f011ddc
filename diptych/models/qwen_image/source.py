"""The source image of an edit request, sized and resampled as QwenImageEditPipeline does."""

from __future__ import annotations

import math

from PIL import Image

# The edit pipeline brings every source image to about one megapixel, whatever the output size.
DEFAULT_SOURCE_AREA = 1024 * 1024
# A checkpoint may declare another area in model_index.json under this key (diffusers ignores
# keys that start with "_"): the shipped micro model is trained on 64×64 sources, which at one
# megapixel would cost 4096 transformer tokens per row.
SOURCE_AREA_KEY = "_diptych_edit_source_area"
# Source sides are rounded to this multiple.
_SIDE_MULTIPLE = 32


def source_size(width: int, height: int, target_area: int = DEFAULT_SOURCE_AREA) -> tuple[int, int]:
    """``(width, height)`` with the source's aspect ratio and about ``target_area`` pixels.

    Uses Python's ``round`` (round half to even) as the pipeline's ``calculate_dimensions`` does.
    """
    ratio = width / height
    new_width = math.sqrt(target_area * ratio)
    new_height = new_width / ratio
    # The floor of one multiple only matters for extreme aspect ratios, where the pipeline would fail on 0.
    side_w = max(round(new_width / _SIDE_MULTIPLE), 1) * _SIDE_MULTIPLE
    side_h = max(round(new_height / _SIDE_MULTIPLE), 1) * _SIDE_MULTIPLE
    return side_w, side_h


def prepare_source(image: Image.Image, target_area: int = DEFAULT_SOURCE_AREA) -> Image.Image:
    """The RGB image both the VLM and the VAE see: resized with Lanczos to :func:`source_size`."""
    rgb = image.convert("RGB")
    size = source_size(rgb.width, rgb.height, target_area)
    return rgb.resize(size, resample=Image.Resampling.LANCZOS, reducing_gap=None)
