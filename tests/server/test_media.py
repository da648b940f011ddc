"""Image encoding of results, and the size rule of edits that name none (as Qwen-Image 2.1's pipeline has it)."""

from __future__ import annotations

import base64
import io

import pytest
from PIL import Image

from diptych.models.base import area_size
from diptych.server.media import encode_image


@pytest.mark.parametrize("fmt", ["png", "webp", "jpeg"])
def test_results_with_alpha_encode_in_every_format(fmt: str) -> None:
    half_clear = Image.new("RGBA", (8, 8), (200, 0, 0, 0))
    decoded = Image.open(io.BytesIO(base64.b64decode(encode_image(half_clear, fmt, None))))
    if fmt == "jpeg":  # no alpha in JPEG: composited onto white
        assert decoded.mode == "RGB"
        assert all(channel >= 250 for channel in decoded.getpixel((4, 4)))  # type: ignore[union-attr]
    else:
        assert decoded.mode == "RGBA" and decoded.getpixel((4, 4))[3] == 0  # type: ignore[index]


@pytest.mark.parametrize("size", [(64, 64), (1600, 900), (900, 1600), (128, 32), (96, 64), (33, 997)])
@pytest.mark.parametrize("side", [64, 512, 1024])
def test_area_size_is_the_qwen_image_21_pipelines_rule(size: tuple[int, int], side: int) -> None:
    from diffusers.pipelines.qwenimage21.pipeline_qwenimage21 import calculate_dimensions

    width, height, _ = calculate_dimensions(side * side, size[0] / size[1])
    assert area_size(*size, side, 32) == (width, height)
