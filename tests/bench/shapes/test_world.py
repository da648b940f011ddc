"""Scenes, rendering and splits of the shapes world."""

from __future__ import annotations

import random

import numpy as np
import pytest

from diptych.bench.shapes.world import (
    BACKGROUND,
    SPLIT_BUCKETS,
    Scene,
    ShapeObject,
    Split,
    example_rng,
    render,
    sample_scene,
    sample_split_scene,
)


def test_sampling_is_deterministic_from_the_seed() -> None:
    first = [sample_scene(random.Random(seed)) for seed in range(50)]
    assert first == [sample_scene(random.Random(seed)) for seed in range(50)]
    assert len(set(first)) >= 45
    assert {len(scene.objects) for scene in first} == {1, 2, 3}


def test_rendering_is_a_function_of_the_scene() -> None:
    scene = sample_scene(random.Random(7))
    assert render(scene).tobytes() == render(Scene(tuple(reversed(scene.objects)))).tobytes()
    assert render(scene).size == (64, 64) and render(scene, size=96).size == (96, 96)
    assert render(scene).tobytes() != render(sample_scene(random.Random(8))).tobytes()


def test_scene_rules_are_enforced() -> None:
    red = ShapeObject(0, "circle", "red", "small")
    with pytest.raises(ValueError, match="share a cell"):
        Scene((red, ShapeObject(0, "square", "blue", "large")))
    with pytest.raises(ValueError, match="1–3 objects"):
        Scene(())
    with pytest.raises(ValueError, match="1–3 objects"):
        Scene(tuple(ShapeObject(cell, "circle", "red", "small") for cell in range(4)))
    with pytest.raises(ValueError, match="unknown attribute"):
        ShapeObject(0, "hexagon", "red", "small")
    with pytest.raises(ValueError, match="outside"):
        ShapeObject(9, "circle", "red", "small")


def test_large_neighbours_never_touch() -> None:
    # The tightest layout: large squares in adjacent cells. Between them, whole columns
    # and rows of pure background must remain.
    row = Scene(tuple(ShapeObject(cell, "square", "blue", "large") for cell in (3, 4, 5)))
    column = Scene(tuple(ShapeObject(cell, "square", "blue", "large") for cell in (1, 4, 7)))
    for scene, axis in ((row, 0), (column, 1)):
        pixels = np.asarray(render(scene)).astype(int)
        background = (np.abs(pixels - np.array(BACKGROUND)).sum(axis=2) == 0).all(axis=axis)
        # Centres at 10.7, 32 and 53.3: each gap lies in one of these spans.
        gaps = [int(background[11:32].sum()), int(background[32:53].sum())]
        assert min(gaps) >= 3, f"background lines between neighbours: {gaps}"


def test_split_is_a_property_of_the_scene_and_stable() -> None:
    # Pinned: changing the hash or the key would silently move scenes between splits.
    assert Scene((ShapeObject(4, "circle", "red", "small"),)).split() is Split.TRAIN
    held = [s for s in (sample_scene(random.Random(seed)) for seed in range(3000)) if s.split() is Split.HELDOUT]
    assert abs(len(held) / 3000 - 1 / SPLIT_BUCKETS) < 0.02
    assert held[0].key() == "0:large:blue:square;6:large:purple:square"


def test_split_sampling_stays_in_its_split() -> None:
    for split in Split:
        scenes = [sample_split_scene(example_rng("t", split, i), split) for i in range(200)]
        assert all(scene.split() is split for scene in scenes)
