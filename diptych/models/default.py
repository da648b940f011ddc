"""The embedded default checkpoint, served when no ``--model`` is given: the micro model.

``diptych-micro`` is what ``python -m training.micro.train`` writes — a
Qwen-Image-Edit checkpoint trained on the shapes world — shipped inside the package and
served by the same family adapter as the public checkpoints. What it scores on ShapesBench
and how it was trained: docs/micro-model.md.
"""

from __future__ import annotations

from pathlib import Path

DEFAULT_DIR = Path(__file__).parent / "micro" / "diptych-micro"


def default_checkpoint() -> Path:
    if not (DEFAULT_DIR / "model_index.json").is_file():
        # An install that dropped the package data (e.g. a wheel built without it).
        raise SystemExit(f"the embedded default model is missing from {DEFAULT_DIR}; "
                         "reinstall diptych with its package data, or serve a checkpoint with --model")
    return DEFAULT_DIR
