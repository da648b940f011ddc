"""Auxiliary heads on the VLM's vision tokens, used only while training (never saved).

Learning to answer from next-token loss alone is slow for a vision tower trained from
scratch: the answer's gradient reaches the picture only through attention the language
model has not learnt yet, so both wait on each other. Two heads read the merged vision
tokens directly and give the tower a dense signal from the first step:

* **scene**: all of a picture's tokens, flattened, predict what fills each of the 3×3
  cells (empty, or shape × colour × size), so the tokens come to carry the whole scene;
* **place**: each token on its own predicts its row and column in the token grid. The
  tower has no absolute position embedding (only rotary, relative, attention), so without
  this a token does not know where it is and "where is …?" has nothing to copy.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from diptych.models.micro.world import COLORS, GRID, SHAPES, SIZES, Scene, ShapeObject

CELL_CLASSES = 1 + len(SHAPES) * len(COLORS) * len(SIZES)  # class 0: an empty cell
_HIDDEN = 512


def cell_class(obj: ShapeObject) -> int:
    return 1 + (SHAPES.index(obj.shape) * len(COLORS) + COLORS.index(obj.color)) * len(SIZES) + SIZES.index(obj.size)


def scene_targets(scene: Scene) -> list[int]:
    """One class per cell, row-major."""
    classes = [0] * (GRID * GRID)
    for obj in scene.objects:
        classes[obj.cell] = cell_class(obj)
    return classes


class VisionProbe(nn.Module):
    """Both heads, for pictures that all have the same ``rows × cols`` grid of merged tokens."""

    def __init__(self, width: int, rows: int, cols: int) -> None:
        super().__init__()
        self.rows, self.cols = rows, cols
        self.scene = nn.Sequential(nn.Linear(rows * cols * width, _HIDDEN), nn.GELU(),
                                   nn.Linear(_HIDDEN, GRID * GRID * CELL_CLASSES))
        self.place = nn.Linear(width, rows + cols)

    def loss(self, tokens: torch.Tensor, scenes: Sequence[Scene]) -> dict[str, torch.Tensor]:
        """``tokens``: ``[pictures · rows · cols, width]`` in raster order per picture, as the tower returns them."""
        count, grid = len(scenes), self.rows * self.cols
        if tokens.shape[0] != count * grid:
            raise ValueError(f"{tokens.shape[0]} vision tokens for {count} pictures of {grid} tokens")
        scene_logits = self.scene(tokens.reshape(count, -1)).reshape(count * GRID * GRID, CELL_CLASSES)
        scene_labels = torch.tensor([label for scene in scenes for label in scene_targets(scene)])
        index = torch.arange(grid).repeat(count)
        place = self.place(tokens)
        place_loss = (F.cross_entropy(place[:, : self.rows], index // self.cols)
                      + F.cross_entropy(place[:, self.rows:], index % self.cols))
        return {"scene": F.cross_entropy(scene_logits, scene_labels), "place": place_loss}
