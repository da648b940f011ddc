"""Source-image sizing against QwenImageEditPipeline's calculate_dimensions."""

from __future__ import annotations

import pytest
from diffusers.pipelines.qwenimage.pipeline_qwenimage_edit import calculate_dimensions
from PIL import Image

from diptych.models.qwen_image.source import DEFAULT_SOURCE_AREA, prepare_source, source_size


@pytest.mark.parametrize("size", [(56, 40), (1024, 1024), (640, 480), (333, 1000), (1920, 1080), (7, 5)])
def test_source_size_equals_pipeline(size: tuple[int, int]) -> None:
    width, height, _ = calculate_dimensions(DEFAULT_SOURCE_AREA, size[0] / size[1])
    assert source_size(*size) == (width, height)


def test_extreme_aspect_ratio_keeps_a_side() -> None:
    assert min(source_size(20000, 10)) == 32


def test_prepare_source_is_rgb_at_source_size() -> None:
    prepared = prepare_source(Image.new("RGBA", (64, 32), (1, 2, 3, 4)), target_area=128 * 128)
    assert prepared.mode == "RGB" and prepared.size == source_size(64, 32, 128 * 128)
    assert prepared.getpixel((0, 0)) == (1, 2, 3)
