"""The analyser reads ground-truth pictures back into their scenes (ShapesBench's judge)."""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFilter

from diptych.bench.shapes.analyser import MIN_AREA, analyse
from diptych.bench.shapes.data import scene_example
from diptych.bench.shapes.world import BACKGROUND, Scene, Split, render

logger = logging.getLogger(__name__)
HELD_OUT = [scene_example(Split.HELDOUT, i) for i in range(500)]


def _accuracy(scenes: list[Scene], picture: Callable[[Scene], Image.Image]) -> float:
    """Share of scenes read back exactly: every object's shape, colour, size and cell, and no extra."""
    return sum(analyse(picture(scene)).scene() == scene for scene in scenes) / len(scenes)


def test_reads_500_held_out_renders() -> None:
    accuracy = _accuracy(HELD_OUT, render)
    logger.info("analyser accuracy on 500 held-out renders: %.3f", accuracy)
    assert accuracy >= 0.99


@pytest.mark.parametrize(("size", "antialias"), [(64, False), (128, True), (200, True)])
def test_reads_other_sizes_and_aliased_renders(size: int, antialias: bool) -> None:
    assert _accuracy(HELD_OUT[:150], lambda scene: render(scene, size, antialias)) >= 0.99


def test_margins_between_shapes_are_wide() -> None:
    # The cuts are skew −0.28 (triangle below) and joint 0.83 (square above): measured
    # features stay well away from them, so slightly imperfect pictures still read right.
    features: dict[str, list[tuple[float, float]]] = {"circle": [], "square": [], "triangle": []}
    for scene in HELD_OUT[:200]:
        for obj, found in zip(scene.objects, analyse(render(scene)).objects, strict=True):
            features[obj.shape].append((found.skew, found.joint))
    skew = {shape: np.array(values)[:, 0] for shape, values in features.items()}
    joint = {shape: np.array(values)[:, 1] for shape, values in features.items()}
    assert skew["triangle"].max() < -0.45 and min(skew["circle"].min(), skew["square"].min()) > -0.1
    assert joint["circle"].max() < 0.72 and joint["square"].min() > 0.95


def test_survives_noise_and_blur() -> None:
    rng = np.random.default_rng(0)

    def degraded(scene: Scene) -> Image.Image:
        blurred = np.asarray(render(scene).filter(ImageFilter.GaussianBlur(0.6)), dtype=np.float64)
        return Image.fromarray(np.clip(blurred + rng.normal(0, 10, blurred.shape), 0, 255).astype(np.uint8))

    assert _accuracy(HELD_OUT[:150], degraded) >= 0.95


def test_blank_pictures_specks_and_crowded_cells() -> None:
    blank = Image.new("RGB", (64, 64), BACKGROUND)
    assert analyse(blank).objects == () and analyse(blank).scene() is None
    speck = blank.copy()
    ImageDraw.Draw(speck).rectangle((30, 30, 31, 31), fill=(220, 30, 30))  # 4 px < MIN_AREA
    assert MIN_AREA > 4 and analyse(speck).objects == ()
    crowded = blank.copy()
    draw = ImageDraw.Draw(crowded)
    draw.rectangle((2, 2, 7, 7), fill=(220, 30, 30))
    draw.rectangle((12, 12, 17, 17), fill=(30, 80, 230))  # same top-left cell: not a valid scene
    analysis = analyse(crowded)
    assert [obj.cell for obj in analysis.objects] == [0, 0] and analysis.scene() is None
