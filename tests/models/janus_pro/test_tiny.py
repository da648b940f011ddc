"""The tiny Janus-Pro factory: public layout, loadable by transformers, generates images, reacts to inputs."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from PIL import Image

from diptych.models.janus_pro import chat_format as cf
from diptych.models.janus_pro.tiny import write_tiny_janus_pro


def test_layout_and_special_tokens(tiny_janus_dir: Path) -> None:
    config = json.loads((tiny_janus_dir / "config.json").read_text())
    assert config["architectures"] == ["JanusForConditionalGeneration"]
    text = config["text_config"]
    assert text["hidden_size"] // text["num_attention_heads"] >= 32  # vLLM's CPU attention
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(tiny_janus_dir)
    tokenizer = processor.tokenizer
    assert type(processor).__name__ == "JanusProcessor"
    assert config["image_token_id"] == tokenizer.convert_tokens_to_ids(cf.IMAGE_TOKEN)
    generation = json.loads((tiny_janus_dir / "generation_config.json").read_text())
    assert generation["generation_kwargs"]["boi_token_id"] == tokenizer.convert_tokens_to_ids(cf.BOI)
    assert generation["pad_token_id"] == tokenizer.convert_tokens_to_ids(cf.PAD)
    ids = tokenizer(cf.generation_prompt("a red cat") + cf.BOI)["input_ids"]
    assert ids[0] == tokenizer.bos_token_id and ids[-1] == generation["generation_kwargs"]["boi_token_id"]
    assert processor.num_image_tokens == config["vision_config"]["num_image_tokens"] == 16


def test_deterministic_from_seed(tiny_janus_dir: Path, tmp_path: Path) -> None:
    again = write_tiny_janus_pro(tmp_path / "again", seed=0)
    other = write_tiny_janus_pro(tmp_path / "other", seed=1)
    weights = (tiny_janus_dir / "model.safetensors").read_bytes()
    assert (again / "model.safetensors").read_bytes() == weights
    assert (other / "model.safetensors").read_bytes() != weights


def test_transformers_generates_images_and_answers(tiny_janus_dir: Path) -> None:
    from transformers import AutoProcessor, JanusForConditionalGeneration

    processor = AutoProcessor.from_pretrained(tiny_janus_dir)
    model = JanusForConditionalGeneration.from_pretrained(tiny_janus_dir).eval()
    tokens = []
    for prompt in ("a red cat", "a blue square on a mat"):
        inputs = processor(text=[cf.generation_prompt(prompt)], generation_mode="image", return_tensors="pt")
        out = model.generate(**inputs, generation_mode="image", do_sample=False, guidance_scale=4.0)
        assert out.shape == (1, 16)
        tokens.append(out[0].tolist())
        pixels = model.decode_image_tokens(out)
        assert pixels.shape == (1, 64, 64, 3) and torch.isfinite(pixels).all()
    assert tokens[0] != tokens[1], "image tokens ignore the prompt"

    chat = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is it?"}]}],
        add_generation_prompt=True,
    )
    answers = []
    for colour in ((200, 30, 30), (30, 30, 200)):
        inputs = processor(text=[chat], images=[Image.new("RGB", (80, 60), colour)], return_tensors="pt")
        out = model.generate(**inputs, max_new_tokens=6, do_sample=False)
        answers.append(out[0, inputs["input_ids"].shape[1] :].tolist())
    assert answers[0] != answers[1], "answers ignore the image"
