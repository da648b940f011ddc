"""The Qwen-Image 2.1 adapter: what it declares, its staged directory for vLLM, and its chat rendering."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

from diptych import compat
from diptych.engine.memory_plan import placement_of
from diptych.models.qwen_image_21.adapter import (
    DEFAULT_OUTPUT_RESOLUTION,
    MAX_REFERENCES,
    OUTPUT_RESOLUTION_KEY,
    QwenImage21Adapter,
)
from diptych.models.qwen_image_21.tiny import OUTPUT_RESOLUTION
from diptych.models.qwen_image_21.vlm_staging import stage_for_vllm
from diptych.models.registry import load_adapter
from diptych.types import ChatMessage, ImagePart, TextPart
from tests.conftest import TinyCheckpoint

compat.install()

from transformers import AutoProcessor, Qwen3VLForConditionalGeneration  # noqa: E402  (after compat.install)

RED = Image.new("RGB", (64, 64), (220, 30, 30))
WIDE = Image.new("RGB", (128, 64), (30, 30, 220))


@pytest.fixture(scope="module")
def tiny_dir(tiny_checkpoint: TinyCheckpoint) -> Path:
    return tiny_checkpoint("qwen-image-2.1")


@pytest.fixture(scope="module")
def staged(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return stage_for_vllm(tiny_dir, tmp_path_factory.mktemp("staging"))


@pytest.fixture(scope="module")
def processor(staged: Path) -> Any:
    return AutoProcessor.from_pretrained(staged)


def test_registry_and_capabilities(tiny_dir: Path) -> None:
    adapter = load_adapter(tiny_dir)
    assert isinstance(adapter, QwenImage21Adapter)
    caps = adapter.capabilities()
    assert caps.names() == ("understand", "generate", "edit")
    assert placement_of(caps, "cpu") == {"ar": "cpu", "flow": "cpu"}
    assert caps.max_source_images == MAX_REFERENCES and caps.size_multiple == 32 and not caps.supports_mask
    assert caps.default_size == (OUTPUT_RESOLUTION, OUTPUT_RESOLUTION)
    assert adapter.checkpoint_dtype() == "float32"
    assert adapter.output_resolution == OUTPUT_RESOLUTION


def test_weight_files_name_each_engines_components(tiny_dir: Path) -> None:
    weights = QwenImage21Adapter(tiny_dir).weight_files()
    assert set(weights) == {"ar", "flow"}
    (part,) = weights["ar"]
    assert part.component == "text_encoder" and part.files == (tiny_dir / "text_encoder" / "model.safetensors",)
    assert [p.component for p in weights["flow"]] == ["transformer", "vae", "text_encoder"]
    assert all(p.files for p in weights["flow"])


def test_the_checkpoint_declares_its_output_resolution(tiny_dir: Path, tmp_path: Path) -> None:
    index = json.loads((tiny_dir / "model_index.json").read_text())
    del index[OUTPUT_RESOLUTION_KEY]
    (tmp_path / "model_index.json").write_text(json.dumps(index))
    assert QwenImage21Adapter(tmp_path).output_resolution == DEFAULT_OUTPUT_RESOLUTION  # public checkpoints
    for bad in (0, 16, 72, 64.0, "64", True, None):
        (tmp_path / "model_index.json").write_text(json.dumps({**index, OUTPUT_RESOLUTION_KEY: bad}))
        with pytest.raises(ValueError, match=OUTPUT_RESOLUTION_KEY):
            QwenImage21Adapter(tmp_path)
    (tmp_path / "model_index.json").write_text(json.dumps({key: v for key, v in index.items() if key != "processor"}))
    with pytest.raises(ValueError, match="processor"):
        QwenImage21Adapter(tmp_path)


def test_staging_links_text_encoder_and_processor(tiny_dir: Path, staged: Path, tmp_path: Path) -> None:
    expected = {path.name: path for folder in ("processor", "text_encoder") for path in (tiny_dir / folder).iterdir()}
    assert sorted(p.name for p in staged.iterdir()) == sorted(expected)
    for name, source in expected.items():
        assert (staged / name).is_symlink(), name  # never a copy of the weights
        assert Path(os.readlink(staged / name)) == source.resolve()
    inode = staged.stat().st_ino
    assert stage_for_vllm(tiny_dir, staged.parent) == staged and staged.stat().st_ino == inode  # idempotent
    broken = tmp_path / "broken"
    shutil.copytree(tiny_dir, broken, ignore=shutil.ignore_patterns("processor"))
    with pytest.raises(ValueError, match="processor/"):
        stage_for_vllm(broken, tmp_path / "staging")


def test_transformers_loads_the_staged_directory(staged: Path, processor: Any) -> None:
    assert type(processor).__name__ == "Qwen3VLProcessor"
    model = Qwen3VLForConditionalGeneration.from_pretrained(staged).eval()
    batch = processor(text=["<|vision_start|><|image_pad|><|vision_end|>hi"], images=[RED], return_tensors="pt")
    with torch.no_grad():
        assert model(**batch).logits.shape[-1] == model.config.text_config.vocab_size


def test_rendering_matches_the_processor_template(tiny_dir: Path, staged: Path, processor: Any) -> None:
    adapter = QwenImage21Adapter(tiny_dir)
    adapter.prepare_ar_model(staged.parent)
    messages = (
        ChatMessage("system", (TextPart("Be brief."),)),
        ChatMessage("user", (TextPart("Compare "), ImagePart(RED), TextPart(" and "), ImagePart(WIDE))),
        ChatMessage("assistant", (TextPart("Red, blue."),)),
        ChatMessage("user", (TextPart("Sure?"),)),
    )
    conversation = [
        {"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
        {"role": "user", "content": [{"type": "text", "text": "Compare "}, {"type": "image"},
                                     {"type": "text", "text": " and "}, {"type": "image"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "Red, blue."}]},
        {"role": "user", "content": [{"type": "text", "text": "Sure?"}]},
    ]
    prompt = adapter.render_chat(messages)
    assert prompt.text == processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
    vision = "<|vision_start|><|image_pad|><|vision_end|>"
    assert f"<|im_start|>user\nCompare {vision} and {vision}<|im_end|>\n" in prompt.text
    assert prompt.text.startswith("<|im_start|>system\nBe brief.<|im_end|>\n")  # no default system turn
    assert prompt.images == (RED, WIDE)
    # Counted as the processor expands it: each image at its merged patch grid.
    expanded = processor(text=[prompt.text], images=list(prompt.images), return_tensors="pt")["input_ids"]
    assert adapter.count_prompt_tokens(prompt) == expanded.shape[1]
    assert adapter.count_prompt_tokens(prompt.text) < expanded.shape[1]
