"""The vision probe's targets name each cell's object, and its losses can be driven down."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch

from training.micro.checkpoint import SMOKE, load_processor, write_skeleton
from training.micro.vision_probe import (
    CELL_CLASSES,
    TOKENS_PER_PICTURE,
    VisionProbe,
    cell_class,
    scene_targets,
)
from diptych.bench.shapes.world import (
    COLORS,
    GRID,
    SHAPES,
    SIZES,
    Scene,
    ShapeObject,
    render,
)


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
    probe = VisionProbe(width=8)
    scene = Scene((ShapeObject(4, "circle", "red", "small"),))
    with pytest.raises(ValueError, match="16 vision tokens for 1 pictures of 9 tokens"):
        probe.loss(torch.zeros(16, 8), [scene])


def test_both_losses_fall_when_each_token_carries_its_cell() -> None:
    # Tokens made from their own cell's class and their own place are what a trained tower
    # gives; the probe must then be able to read both back, token by token.
    torch.manual_seed(0)
    scenes = [Scene((ShapeObject(cell, SHAPES[cell % 3], COLORS[cell % 6], SIZES[cell % 2]),
                     ShapeObject((cell + 4) % 9, SHAPES[(cell + 1) % 3], COLORS[(cell + 2) % 6], SIZES[(cell + 1) % 2])))
              for cell in range(9)]
    code = torch.nn.Embedding(CELL_CLASSES + TOKENS_PER_PICTURE, 16)

    def tokens() -> torch.Tensor:
        classes = torch.tensor([label for scene in scenes for label in scene_targets(scene)])
        places = CELL_CLASSES + torch.arange(TOKENS_PER_PICTURE).repeat(len(scenes))
        return (code(classes) + code(places)).detach()

    probe = VisionProbe(width=16)
    inputs = tokens()
    first = {name: value.item() for name, value in probe.loss(inputs, scenes).items()}
    optimizer = torch.optim.Adam(probe.parameters(), lr=1e-2)
    for _ in range(150):
        losses = probe.loss(inputs, scenes)
        optimizer.zero_grad()
        sum(losses.values(), torch.zeros(())).backward()
        optimizer.step()
    last = {name: value.item() for name, value in probe.loss(inputs, scenes).items()}
    assert set(first) == {"cell", "place"}
    assert last["cell"] < 0.1 * first["cell"] and last["place"] < 0.1 * first["place"]


def test_the_processor_gives_one_token_a_cell(tmp_path: Path) -> None:
    write_skeleton(tmp_path, SMOKE)
    processor = load_processor(tmp_path)
    picture = render(Scene((ShapeObject(4, "circle", "red", "small"),)))
    grid = processor.image_processor(images=[picture], return_tensors="pt")["image_grid_thw"][0].tolist()
    merge = SMOKE.vision["spatial_merge_size"]
    assert grid == [1, GRID * merge, GRID * merge]
