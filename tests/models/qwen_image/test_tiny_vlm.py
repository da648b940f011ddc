"""The tiny Qwen2.5-VL writer: public layout, consistent ids, loadable by transformers, not degenerate."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

from diptych import compat
from diptych.models.qwen_image.chat_template import SPECIAL_TOKENS
from diptych.models.qwen_image.tiny_vlm import write_tiny_vlm

compat.install()

from transformers import (  # noqa: E402  (after compat.install: the processor needs it without torchvision)
    AutoProcessor,
    AutoTokenizer,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLProcessor,
)


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tiny_vlm")
    write_tiny_vlm(root, seed=0)
    return root


@pytest.fixture(scope="module")
def processor(tiny_root: Path) -> Any:
    return AutoProcessor.from_pretrained(tiny_root / "processor")


@pytest.fixture(scope="module")
def model(tiny_root: Path) -> Any:
    return Qwen2_5_VLForConditionalGeneration.from_pretrained(tiny_root / "text_encoder").eval()


def _chat(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]


def _greedy(model: Any, processor: Any, image: Image.Image, text: str, n: int = 8) -> list[int]:
    prompt = processor.apply_chat_template(_chat(text), add_generation_prompt=True, tokenize=False)
    inputs = processor(text=[prompt], images=[image], return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=n, do_sample=False, eos_token_id=None)
    return out[0, inputs["input_ids"].shape[1] :].tolist()


def test_writes_public_layout(tiny_root: Path) -> None:
    assert (tiny_root / "text_encoder" / "model.safetensors").is_file()
    assert (tiny_root / "tokenizer" / "tokenizer.json").is_file()
    for name in ("preprocessor_config.json", "video_preprocessor_config.json", "chat_template.jinja", "tokenizer.json"):
        assert (tiny_root / "processor" / name).is_file(), name
    # The public class names, not the PIL twins: a torchvision install must load the same files.
    pre = json.loads((tiny_root / "processor" / "preprocessor_config.json").read_text())
    assert pre["image_processor_type"] == "Qwen2VLImageProcessor"


def test_config_ids_come_from_tokenizer(tiny_root: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_root / "tokenizer")
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    assert len(set(ids.values())) == len(SPECIAL_TOKENS)
    config = json.loads((tiny_root / "text_encoder" / "config.json").read_text())
    assert config["image_token_id"] == ids["<|image_pad|>"]
    assert config["video_token_id"] == ids["<|video_pad|>"]
    assert config["vision_start_token_id"] == ids["<|vision_start|>"]
    assert config["vision_end_token_id"] == ids["<|vision_end|>"]
    text = config["text_config"]
    assert text["bos_token_id"] == ids["<|endoftext|>"]
    assert text["eos_token_id"] == ids["<|im_end|>"] == tokenizer.eos_token_id
    assert text["pad_token_id"] == ids["<|endoftext|>"] == tokenizer.pad_token_id
    assert text["vocab_size"] == len(tokenizer)
    head_dim = text["hidden_size"] // text["num_attention_heads"]
    assert head_dim >= 32
    assert sum(text["rope_parameters"]["mrope_section"]) == head_dim // 2
    generation = json.loads((tiny_root / "text_encoder" / "generation_config.json").read_text())
    assert generation["eos_token_id"] == [ids["<|im_end|>"], ids["<|endoftext|>"]]


def test_tokenizer_keeps_special_tokens_whole(tiny_root: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_root / "tokenizer")
    encoded = tokenizer("<|im_start|>user\nhello<|vision_start|><|image_pad|><|vision_end|>")["input_ids"]
    assert encoded[0] == tokenizer.convert_tokens_to_ids("<|im_start|>")
    assert encoded[-3:] == tokenizer.convert_tokens_to_ids(["<|vision_start|>", "<|image_pad|>", "<|vision_end|>"])
    assert tokenizer.decode(tokenizer("A red circle.")["input_ids"]) == "A red circle."


def test_processor_builds_image_chat_inputs(processor: Any) -> None:
    assert isinstance(processor, Qwen2_5_VLProcessor)
    prompt = processor.apply_chat_template(_chat("What is this?"), add_generation_prompt=True, tokenize=False)
    assert prompt == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>What is this?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    inputs = processor(text=[prompt], images=[Image.new("RGB", (64, 64), (200, 10, 10))], return_tensors="pt")
    grid = inputs["image_grid_thw"][0].tolist()
    assert grid == [1, 4, 4]  # 64 px → 56 px after smart_resize → 4 × 4 patches of 14 px
    image_token_id = processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert int((inputs["input_ids"] == image_token_id).sum()) == 4  # 16 patches / merge 2×2
    assert inputs["pixel_values"].shape[0] == 16


def test_generate_depends_on_image(model: Any, processor: Any) -> None:
    red = _greedy(model, processor, Image.new("RGB", (64, 64), (220, 20, 20)), "What is this?")
    blue = _greedy(model, processor, Image.new("RGB", (64, 64), (20, 20, 220)), "What is this?")
    assert len(red) == 8
    assert red != blue


def test_deterministic_from_seed(tiny_root: Path, tmp_path: Path) -> None:
    write_tiny_vlm(tmp_path / "same", seed=0)
    write_tiny_vlm(tmp_path / "other", seed=1)
    weights = "text_encoder/model.safetensors"
    assert (tmp_path / "same" / weights).read_bytes() == (tiny_root / weights).read_bytes()
    assert (tmp_path / "other" / weights).read_bytes() != (tiny_root / weights).read_bytes()
    for name in ("tokenizer/tokenizer.json", "processor/preprocessor_config.json", "text_encoder/config.json"):
        assert (tmp_path / "same" / name).read_text() == (tiny_root / name).read_text(), name
