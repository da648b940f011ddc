"""Our runners on the tiny Qwen-Image checkpoints, and diffusers' reference pipelines: once per session."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from diptych import compat
from diptych.models.qwen_image.flow import QwenImageFlowRunner
from tests.conftest import TinyCheckpoint


@pytest.fixture(scope="session")
def tiny_qwen_image_dir(tiny_checkpoint: TinyCheckpoint) -> Path:
    return tiny_checkpoint("qwen-image")


@pytest.fixture(scope="session")
def tiny_qwen_image_edit_dir(tiny_checkpoint: TinyCheckpoint) -> Path:
    return tiny_checkpoint("qwen-image-edit")


@pytest.fixture(scope="session")
def t2i_runner(tiny_qwen_image_dir: Path) -> QwenImageFlowRunner:
    return QwenImageFlowRunner(tiny_qwen_image_dir, "cpu")


@pytest.fixture(scope="session")
def edit_runner(tiny_qwen_image_edit_dir: Path) -> QwenImageFlowRunner:
    return QwenImageFlowRunner(tiny_qwen_image_edit_dir, "cpu")


@pytest.fixture(scope="session")
def t2i_pipeline(tiny_qwen_image_dir: Path, t2i_runner: QwenImageFlowRunner) -> Any:
    from diffusers import QwenImagePipeline

    pipe = QwenImagePipeline.from_pretrained(tiny_qwen_image_dir)
    # Same arguments on both sides: the reference drops our computed prefix, not its hard-coded 34.
    pipe.prompt_template_encode_start_idx = t2i_runner.prompt_encoder.generate_prefix_len
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="session")
def edit_pipeline(tiny_qwen_image_edit_dir: Path, edit_runner: QwenImageFlowRunner) -> Any:
    compat.install()  # QwenImageEditPipeline loads Qwen2VLProcessor, which wants torchvision
    from diffusers import QwenImageEditPipeline

    pipe = QwenImageEditPipeline.from_pretrained(tiny_qwen_image_edit_dir)
    pipe.prompt_template_encode_start_idx = edit_runner.prompt_encoder.edit_prefix_len
    pipe.set_progress_bar_config(disable=True)
    return pipe
