"""The tiny Gemma3 writer: public layout, what vLLM expects, loadable by transformers, not degenerate."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from safetensors import safe_open

from diptych import compat
from diptych.cli import main as cli_main
from diptych.models.gemma3.tiny import (
    BOI_TOKEN,
    EOI_TOKEN,
    IMAGE_TOKEN,
    MM_TOKENS_PER_IMAGE,
    greedy_reference,
    probe_images,
)

compat.install()

from transformers import AutoProcessor, Gemma3ForConditionalGeneration  # noqa: E402  (after compat.install)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tiny_gemma3") / "model"
    # Through the command line, as users write it: `diptych make-tiny gemma3 DIR`.
    assert cli_main(["make-tiny", "gemma3", str(out), "--seed", "0"]) == 0
    return out


@pytest.fixture(scope="module")
def processor(tiny_dir: Path) -> Any:
    return AutoProcessor.from_pretrained(tiny_dir)


@pytest.fixture(scope="module")
def model(tiny_dir: Path) -> Any:
    return Gemma3ForConditionalGeneration.from_pretrained(tiny_dir).eval()


def test_layout_and_token_ids_agree(tiny_dir: Path, processor: Any) -> None:
    config = json.loads((tiny_dir / "config.json").read_text())
    assert config["architectures"] == ["Gemma3ForConditionalGeneration"]
    assert config["text_config"]["head_dim"] >= 32  # vLLM's CPU attention (the stock comparison) needs it
    tokenizer = processor.tokenizer
    assert config["boi_token_index"] == tokenizer.convert_tokens_to_ids(BOI_TOKEN)
    assert config["eoi_token_index"] == tokenizer.convert_tokens_to_ids(EOI_TOKEN)
    assert config["image_token_index"] == tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    assert (tokenizer.boi_token, tokenizer.image_token) == (BOI_TOKEN, IMAGE_TOKEN)
    for run in ("\n", "\n\n", "\n\n\n", "\n\n\n\n"):  # vLLM's Gemma3 processor looks these up
        assert len(tokenizer.encode(run, add_special_tokens=False)) == 1
    for name in ("tokenizer.json", "tokenizer_config.json", "preprocessor_config.json", "chat_template.jinja"):
        assert (tiny_dir / name).is_file()


def test_vision_weights_carry_vllms_prefix(tiny_dir: Path) -> None:
    with safe_open(tiny_dir / "model.safetensors", "pt") as weights:
        vision = [name for name in weights.keys() if "vision_tower" in name]
    assert vision and all("vision_tower.vision_model." in name for name in vision)


def test_processor_expands_an_image_to_its_soft_tokens(processor: Any, model: Any) -> None:
    image, _ = probe_images()
    prompt, _ = greedy_reference(
        model, processor, image, "What is in this picture?", bidirectional=True, max_new_tokens=1
    )
    assert prompt.count(model.config.image_token_index) == MM_TOKENS_PER_IMAGE
    assert prompt.count(model.config.boi_token_index) == 1


def test_answers_depend_on_the_image_and_on_the_image_mask(processor: Any, model: Any) -> None:
    answers = {
        (i, bidirectional): greedy_reference(
            model, processor, image, "What is in this picture?", bidirectional=bidirectional, max_new_tokens=8
        )[1]
        for i, image in enumerate(probe_images())
        for bidirectional in (True, False)
    }
    assert answers[0, True] != answers[1, True]
    assert any(answers[i, True] != answers[i, False] for i in (0, 1))
