"""The family adapter: what it declares, and how it renders and counts chats for both checkpoint kinds."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

from diptych.models.qwen_image.adapter import (
    DEFAULT_GUIDANCE_SCALE,
    GUIDANCE_SCALE_KEY,
    IMAGE_SIDE_KEY,
    QwenImageAdapter,
)
from diptych.models.qwen_image.source import DEFAULT_SOURCE_AREA, SOURCE_AREA_KEY
from diptych.models.registry import architecture_of, load_adapter
from diptych.types import ChatMessage, ImagePart, TextPart


def test_registry_picks_the_adapter_by_pipeline_class(tiny_qwen_image_dir: Path, tiny_qwen_image_edit_dir: Path,
                                                      tmp_path: Path) -> None:
    assert architecture_of(tiny_qwen_image_dir) == "QwenImagePipeline"
    assert isinstance(load_adapter(tiny_qwen_image_edit_dir), QwenImageAdapter)
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "NoSuchPipeline"}))
    with pytest.raises(ValueError, match="NoSuchPipeline.*supported: "):
        load_adapter(tmp_path)
    with pytest.raises(ValueError, match="not a checkpoint directory"):
        load_adapter(tmp_path / "missing")


def test_capabilities(tiny_qwen_image_dir: Path, tiny_qwen_image_edit_dir: Path) -> None:
    plain = QwenImageAdapter(tiny_qwen_image_dir).capabilities()
    edit = QwenImageAdapter(tiny_qwen_image_edit_dir).capabilities()
    assert plain.names() == ("understand", "generate")
    assert edit.names() == ("understand", "generate", "edit")
    assert plain.size_multiple == edit.size_multiple == 16


def test_a_checkpoint_declares_its_default_guidance(tiny_qwen_image_edit_dir: Path, tmp_path: Path) -> None:
    assert QwenImageAdapter(tiny_qwen_image_edit_dir).capabilities().default_guidance_scale == DEFAULT_GUIDANCE_SCALE
    # The adapter reads only model_index.json and vae/config.json.
    index = json.loads((tiny_qwen_image_edit_dir / "model_index.json").read_text())
    (tmp_path / "vae").mkdir()
    shutil.copy(tiny_qwen_image_edit_dir / "vae" / "config.json", tmp_path / "vae" / "config.json")
    for value in (2, 2.5, 1):
        (tmp_path / "model_index.json").write_text(json.dumps({**index, GUIDANCE_SCALE_KEY: value}))
        assert QwenImageAdapter(tmp_path).capabilities().default_guidance_scale == value
    for bad in (-1, "2", True, None, float("nan")):
        (tmp_path / "model_index.json").write_text(json.dumps({**index, GUIDANCE_SCALE_KEY: bad}))
        with pytest.raises(ValueError, match=GUIDANCE_SCALE_KEY):
            QwenImageAdapter(tmp_path)


def test_a_checkpoint_declares_its_default_image_side(tiny_qwen_image_edit_dir: Path, tmp_path: Path) -> None:
    assert QwenImageAdapter(tiny_qwen_image_edit_dir).capabilities().default_size == (256, 256)  # as the public ones
    index = json.loads((tiny_qwen_image_edit_dir / "model_index.json").read_text())
    (tmp_path / "vae").mkdir()
    shutil.copy(tiny_qwen_image_edit_dir / "vae" / "config.json", tmp_path / "vae" / "config.json")
    (tmp_path / "model_index.json").write_text(json.dumps({**index, IMAGE_SIDE_KEY: 64}))
    assert QwenImageAdapter(tmp_path).capabilities().default_size == (64, 64)
    for bad in (0, 16, 72, 64.0, "64", True, None):  # the VAE's multiple is 16, the smallest side 32
        (tmp_path / "model_index.json").write_text(json.dumps({**index, IMAGE_SIDE_KEY: bad}))
        with pytest.raises(ValueError, match=IMAGE_SIDE_KEY):
            QwenImageAdapter(tmp_path).capabilities()


def test_the_adapter_takes_the_declared_source_area(tmp_path: Path) -> None:
    index = {"_class_name": "QwenImageEditPipeline", **{part: ["x", "y"] for part in
                                                        ("text_encoder", "tokenizer", "transformer", "vae", "scheduler")}}
    (tmp_path / "model_index.json").write_text(json.dumps(index))
    assert QwenImageAdapter(tmp_path).source_area == DEFAULT_SOURCE_AREA  # public checkpoints: as diffusers
    (tmp_path / "model_index.json").write_text(json.dumps({**index, SOURCE_AREA_KEY: 4096}))
    assert QwenImageAdapter(tmp_path).source_area == 4096
    (tmp_path / "model_index.json").write_text(json.dumps({**index, SOURCE_AREA_KEY: 0}))
    with pytest.raises(ValueError, match="must be positive"):
        QwenImageAdapter(tmp_path)


@pytest.mark.parametrize("which", ["plain", "edit"])
def test_chat_rendering_and_counting_with_images(
    which: str, tiny_qwen_image_dir: Path, tiny_qwen_image_edit_dir: Path, tmp_path: Path
) -> None:
    adapter = QwenImageAdapter(tiny_qwen_image_dir if which == "plain" else tiny_qwen_image_edit_dir)
    adapter.prepare_ar_model(tmp_path / "staging")  # the plain checkpoint gets its image processor here
    small, large = Image.new("RGB", (56, 56)), Image.new("RGB", (112, 112))
    messages = (ChatMessage("user", (ImagePart(small), TextPart("what is this?"))),)
    prompt = adapter.render_chat(messages)
    assert prompt.text.count("<|image_pad|>") == 1 and prompt.images == (small,)
    text_only = adapter.count_prompt_tokens(prompt.text)
    with_small = adapter.count_prompt_tokens(prompt)
    with_large = adapter.count_prompt_tokens(adapter.render_chat((ChatMessage("user", (ImagePart(large),
                                                                                  TextPart("what is this?"))),)))
    assert text_only < with_small < with_large  # images count at their expanded size


def test_weight_files_are_what_each_engine_loads(tiny_qwen_image_edit_dir: Path) -> None:
    weights = QwenImageAdapter(tiny_qwen_image_edit_dir).weight_files()
    # vLLM serves the VLM; the flow worker loads it again to encode prompts, with the MMDiT and the VAE.
    assert [w.component for w in weights["ar"]] == ["text_encoder"]
    assert [w.component for w in weights["flow"]] == ["transformer", "vae", "text_encoder"]
    for part in (*weights["ar"], *weights["flow"]):
        assert part.files and all(f.parent == tiny_qwen_image_edit_dir / part.component for f in part.files)
        assert part.keeps("any.tensor")
