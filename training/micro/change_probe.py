"""An auxiliary head on the transformer's edit tokens, used only while training (never saved).

An edit must change the object the instruction names and copy the rest. Run p1's
transformer hedged over which object that is: with the picture still pure noise (σ 0.995),
its predicted picture was off by 0.076 on average on tokens the edit leaves alone, and
objects it should have left alone came out recoloured, or gone, in 20 of its 33 failures
on 60 ShapesBench edits. The flow loss teaches *where* only weakly: near σ 1 its target is
mostly noise. This head makes the image stream after the middle block predict, for every
target token, whether the edit changes it: a signal that does not depend on the noise
level, since the instruction and the source alone decide it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

# A token changes when some pixel of its patch differs by more than this (0–255) on some
# channel: anti-aliased edges of an object differ by more; rounding does not reach it.
PIXEL_TOLERANCE = 8


def changed_tokens(source: Image.Image, target: Image.Image, side: int) -> torch.Tensor:
    """``[side·side]`` floats: 1 where the target's patch of the picture differs from the source's.

    Patches are a ``side×side`` grid, row-major, as ``qwen_image.latents.pack`` orders tokens.
    """
    difference = np.abs(np.asarray(source, dtype=np.int16) - np.asarray(target, dtype=np.int16)).max(axis=2)
    height, width = difference.shape
    patches = difference.reshape(side, height // side, side, width // side).max(axis=(1, 3))
    return torch.from_numpy((patches > PIXEL_TOLERANCE).reshape(-1).astype(np.float32))


class ChangeProbe(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.head = nn.Linear(width, 1)
        self._captured: torch.Tensor | None = None

    @contextmanager
    def reading(self, transformer: Any) -> Iterator[None]:
        """While open, every forward of ``transformer`` leaves its middle block's image stream here.

        The middle block (the third of six), so that the later blocks can use what it knows.
        """

        def capture(_module: nn.Module, _inputs: Any, output: tuple[torch.Tensor, torch.Tensor]) -> None:
            self._captured = output[1]  # (text stream, image stream)

        blocks = transformer.transformer_blocks
        handle = blocks[(len(blocks) - 1) // 2].register_forward_hook(capture)
        try:
            yield
        finally:
            handle.remove()

    def loss(self, changed: torch.Tensor) -> torch.Tensor:
        """Binary cross-entropy of the last captured forward's first ``changed.shape[1]`` tokens."""
        if self._captured is None:
            raise RuntimeError("no forward was read")
        hidden, self._captured = self._captured[:, : changed.shape[1]], None
        return F.binary_cross_entropy_with_logits(self.head(hidden).squeeze(-1), changed)
