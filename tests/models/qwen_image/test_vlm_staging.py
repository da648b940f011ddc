"""Staging a Qwen-Image checkpoint's VLM for vLLM: symlinks, idempotence, text-to-image fallbacks."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from diptych.models.qwen_image.chat_template import CHAT_TEMPLATE
from diptych.models.qwen_image.tiny_vlm import write_tiny_vlm
from diptych.models.qwen_image.vlm_staging import stage_for_vllm


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ckpt")
    write_tiny_vlm(root, seed=0)
    return root


def test_stages_symlinks_from_all_three_folders(checkpoint: Path, tmp_path: Path) -> None:
    staged = stage_for_vllm(checkpoint, tmp_path / "staging")
    expected = {
        "config.json": checkpoint / "text_encoder" / "config.json",
        "generation_config.json": checkpoint / "text_encoder" / "generation_config.json",
        "model.safetensors": checkpoint / "text_encoder" / "model.safetensors",
        "preprocessor_config.json": checkpoint / "processor" / "preprocessor_config.json",
        "video_preprocessor_config.json": checkpoint / "processor" / "video_preprocessor_config.json",
        "chat_template.jinja": checkpoint / "processor" / "chat_template.jinja",
        "tokenizer.json": checkpoint / "processor" / "tokenizer.json",
        "tokenizer_config.json": checkpoint / "processor" / "tokenizer_config.json",
    }
    assert sorted(p.name for p in staged.iterdir()) == sorted(expected)
    for name, source in expected.items():
        path = staged / name
        assert path.is_symlink(), name  # never a copy of the weights
        assert Path(os.readlink(path)) == source.resolve()


def test_idempotent(checkpoint: Path, tmp_path: Path) -> None:
    first = stage_for_vllm(checkpoint, tmp_path)
    inode = first.stat().st_ino
    second = stage_for_vllm(checkpoint, tmp_path)
    assert second == first
    assert second.stat().st_ino == inode  # left alone, not rebuilt
    assert [p.name for p in tmp_path.iterdir()] == [first.name]  # no scratch directories left behind


def test_rebuilt_when_the_checkpoint_changes(checkpoint: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(checkpoint, copy)
    staged = stage_for_vllm(copy, tmp_path / "staging")
    (copy / "text_encoder" / "extra.json").write_text("{}")
    restaged = stage_for_vllm(copy, tmp_path / "staging")
    assert restaged == staged
    assert (restaged / "extra.json").is_symlink()


def test_text_to_image_checkpoint_without_processor(checkpoint: Path, tmp_path: Path) -> None:
    # Qwen-Image (text-to-image) ships no processor/ folder and may carry no chat template.
    t2i = tmp_path / "t2i"
    shutil.copytree(checkpoint, t2i, ignore=shutil.ignore_patterns("processor", "chat_template.jinja"))
    staged = stage_for_vllm(t2i, tmp_path / "staging")
    preprocessor = staged / "preprocessor_config.json"
    assert not preprocessor.is_symlink()
    config = json.loads(preprocessor.read_text())
    assert config["image_processor_type"] == "Qwen2VLImageProcessor"
    assert (config["patch_size"], config["merge_size"], config["temporal_patch_size"]) == (14, 2, 2)
    assert (staged / "chat_template.jinja").read_text() == CHAT_TEMPLATE
    assert Path(os.readlink(staged / "tokenizer.json")) == (t2i / "tokenizer" / "tokenizer.json").resolve()


def test_rejects_a_directory_without_text_encoder(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="text_encoder"):
        stage_for_vllm(tmp_path, tmp_path / "staging")
