"""An auxiliary head on the VLM's answers, used only while training (never saved).

A question is answered by finding, among the picture's tokens, the objects it names; a
one-word answer's next-token loss rewards that search only once it already works. Run
r2's VLM (3,900 steps) had learnt lookups partly (colour 63%, shape 83%) but never
absence: it answered "yes" to all 30 held-out existence questions and "1" to 26 of 30
counts. This head makes the last hidden state from which each answer is generated predict
which of the 3×3 cells hold the objects the question is about (``VQAPair.cells``: the
object named, or all those counted or sought, possibly none), so the search is trained
directly, and "none found" is a state of its own.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from diptych.bench.shapes.world import GRID


def cell_targets(cells: Sequence[frozenset[int]]) -> torch.Tensor:
    """``[answers, cells]``: 1 where a cell holds an object the question is about."""
    return torch.tensor([[float(cell in found) for cell in range(GRID * GRID)] for found in cells])


class GroundingProbe(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.head = nn.Linear(width, GRID * GRID)

    def loss(self, hidden: torch.Tensor, rows: Sequence[int], positions: Sequence[int],
             cells: Sequence[frozenset[int]]) -> torch.Tensor:
        """Binary cross-entropy per cell of the states at (``rows``, ``positions``), one per answer."""
        logits = self.head(hidden[torch.tensor(rows), torch.tensor(positions)])
        return F.binary_cross_entropy_with_logits(logits, cell_targets(cells))
