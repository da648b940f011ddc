"""The vision probe's targets name each cell's object, and its losses can be driven down."""

from __future__ import annotations

import itertools

import pytest
import torch

from diptych.models.micro.vision_probe import CELL_CLASSES, VisionProbe, cell_class, scene_targets
from diptych.models.micro.world import COLORS, GRID, SHAPES, SIZES, Scene, ShapeObject


def test_every_object_kind_has_its_own_class() -> None:
    classes = [cell_class(ShapeObject(0, shape, color, size))
               for shape, color, size in itertools.product(SHAPES, COLORS, SIZES)]
    assert sorted(classes) == list(range(1, CELL_CLASSES))


def test_targets_mark_the_objects_cells_and_leave_the_rest_empty() -> None:
    circle, square = ShapeObject(0, "circle", "red", "small"), ShapeObject(8, "square", "blue", "large")
    targets = scene_targets(Scene((circle, square)))
    assert len(targets) == GRID * GRID
    assert targets[0] == cell_class(circle) and targets[8] == cell_class(square)
    assert targets[1:8] == [0] * 7


def test_a_token_count_that_is_not_the_grid_is_refused() -> None:
    probe = VisionProbe(width=8, rows=2, cols=2)
    scene = Scene((ShapeObject(4, "circle", "red", "small"),))
    with pytest.raises(ValueError, match="5 vision tokens for 1 pictures of 4 tokens"):
        probe.loss(torch.zeros(5, 8), [scene])


def test_both_losses_fall_when_the_tokens_carry_the_scene() -> None:
    # Tokens made from the scene (its cell classes and each token's own place) are what a
    # trained tower gives; the probe must then be able to read both back.
    torch.manual_seed(0)
    rows = cols = 2
    scenes = [Scene((ShapeObject(cell, SHAPES[cell % 3], COLORS[cell % 6], SIZES[cell % 2]),)) for cell in range(9)]
    code = torch.nn.Embedding(CELL_CLASSES * GRID * GRID + rows * cols, 16)

    def tokens() -> torch.Tensor:
        per_picture = []
        for scene in scenes:
            content = code(torch.tensor([i * CELL_CLASSES + c for i, c in enumerate(scene_targets(scene))])).sum(0)
            place = code(CELL_CLASSES * GRID * GRID + torch.arange(rows * cols))
            per_picture.append(content + place)
        return torch.cat(per_picture).detach()

    probe = VisionProbe(width=16, rows=rows, cols=cols)
    inputs = tokens()
    first = {name: value.item() for name, value in probe.loss(inputs, scenes).items()}
    optimizer = torch.optim.Adam(probe.parameters(), lr=1e-2)
    for _ in range(150):
        losses = probe.loss(inputs, scenes)
        optimizer.zero_grad()
        sum(losses.values(), torch.zeros(())).backward()
        optimizer.step()
    last = {name: value.item() for name, value in probe.loss(inputs, scenes).items()}
    assert set(first) == {"scene", "place"}
    assert last["scene"] < 0.1 * first["scene"] and last["place"] < 0.1 * first["place"]
