"""Helpers every family's tiny-checkpoint factory shares: config files and weight redraws."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch


def write_json(path: Path, data: dict[str, Any]) -> None:
    """``data`` as sorted, indented JSON, so that a factory writes the same bytes for the same seed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


@torch.no_grad()
def redraw_linear(module: torch.nn.Module, std: float) -> None:
    """Every linear layer's weight and bias drawn again from N(0, std²), from the current RNG."""
    for layer in module.modules():
        if isinstance(layer, torch.nn.Linear):
            layer.weight.normal_(0.0, std)
            if layer.bias is not None:
                layer.bias.normal_(0.0, std)
