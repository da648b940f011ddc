"""Auxiliary heads on the VLM's vision tokens, used only while training (never saved).

Learning to answer from next-token loss alone is slow for a vision tower trained from
scratch: the answer's gradient reaches the picture only through attention the language
model has not learnt yet, so both wait on each other. The processor sees every picture at
a size whose merged tokens are the world's 3×3 cells, one token a cell
(``checkpoint.VISION_PIXELS``), and two heads read each token on its own, giving the tower
a dense signal from the first step:

* **cell**: the token predicts what fills its own cell (empty, or shape × colour × size),
  so a question's answer sits in one token that attention can find by its content;
* **place**: the token predicts its row and column. The tower has no absolute position
  embedding (only rotary, relative, attention), so without this a token does not know
  where it is and "where is …?" has nothing to copy.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from diptych.bench.shapes.world import COLORS, GRID, SHAPES, SIZES, Scene, ShapeObject

CELL_CLASSES = 1 + len(SHAPES) * len(COLORS) * len(SIZES)  # class 0: an empty cell
TOKENS_PER_PICTURE = GRID * GRID
_HIDDEN = 256


def cell_class(obj: ShapeObject) -> int:
    return 1 + (SHAPES.index(obj.shape) * len(COLORS) + COLORS.index(obj.color)) * len(SIZES) + SIZES.index(obj.size)


def scene_targets(scene: Scene) -> list[int]:
    """One class per cell, row-major."""
    classes = [0] * (GRID * GRID)
    for obj in scene.objects:
        classes[obj.cell] = cell_class(obj)
    return classes


class VisionProbe(nn.Module):
    """Both heads, for pictures of one merged token per cell, in raster order."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.cell = nn.Sequential(nn.Linear(width, _HIDDEN), nn.GELU(), nn.Linear(_HIDDEN, CELL_CLASSES))
        self.place = nn.Linear(width, GRID + GRID)

    def loss(self, tokens: torch.Tensor, scenes: Sequence[Scene]) -> dict[str, torch.Tensor]:
        """``tokens``: ``[pictures · cells, width]`` in raster order per picture, as the tower returns them."""
        if tokens.shape[0] != len(scenes) * TOKENS_PER_PICTURE:
            raise ValueError(f"{tokens.shape[0]} vision tokens for {len(scenes)} pictures of "
                             f"{TOKENS_PER_PICTURE} tokens (one a cell)")
        labels = torch.tensor([label for scene in scenes for label in scene_targets(scene)])
        cells = torch.arange(TOKENS_PER_PICTURE).repeat(len(scenes))
        place = self.place(tokens)
        place_loss = F.cross_entropy(place[:, :GRID], cells // GRID) + F.cross_entropy(place[:, GRID:], cells % GRID)
        return {"cell": F.cross_entropy(self.cell(tokens), labels), "place": place_loss}
