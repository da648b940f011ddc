"""The tiny Qwen-Image 2.1 checkpoint: diffusers and transformers load it, and it reacts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from diptych import compat
from diptych.models.qwen_image_21.tiny import OUTPUT_RESOLUTION, OUTPUT_RESOLUTION_KEY
from tests.conftest import TinyCheckpoint

SYSTEM_TURN = "<|im_start|>system\nComprehend and analyze the provided prompt.<|im_end|>\n"


@pytest.fixture(scope="module")
def tiny_dir(tiny_checkpoint: TinyCheckpoint) -> Path:
    return tiny_checkpoint("qwen-image-2.1")


@pytest.fixture(scope="module")
def pipe(tiny_dir: Path) -> Any:
    compat.install()  # Qwen3VLProcessor's video slot and mixin check want torchvision
    from diffusers import QwenImage21Pipeline

    # No processor passed in: the checkpoint's processor/ loads on its own.
    return QwenImage21Pipeline.from_pretrained(tiny_dir)


def _generate(pipe: Any, prompt: str, seed: int, images: list[Image.Image] | None = None) -> np.ndarray:
    size = {} if images else {"height": OUTPUT_RESOLUTION, "width": OUTPUT_RESOLUTION}
    return pipe(
        prompt=prompt,
        image=images,
        num_inference_steps=2,
        output_resolution=OUTPUT_RESOLUTION,  # the pipeline ignores the checkpoint's private key
        generator=torch.Generator().manual_seed(seed),
        output_type="np",
        **size,
    ).images[0]


def test_layout_and_size(tiny_dir: Path) -> None:
    index = json.loads((tiny_dir / "model_index.json").read_text())
    assert index["_class_name"] == "QwenImage21Pipeline"
    assert index["transformer"] == ["diffusers", "QwenImage21Transformer2DModel"]
    assert index["vae"] == ["diffusers", "AutoencoderKLQwenImage21"]
    assert index["text_encoder"] == ["transformers", "Qwen3VLForConditionalGeneration"]
    assert index["processor"] == ["transformers", "Qwen3VLProcessor"]
    assert index[OUTPUT_RESOLUTION_KEY] == OUTPUT_RESOLUTION
    total = sum(f.stat().st_size for f in tiny_dir.rglob("*") if f.is_file())
    assert total < 8 * 2**20


def test_deterministic_for_a_seed(tiny_dir: Path, tmp_path: Path) -> None:
    from diptych.models.qwen_image_21.tiny import write_tiny_qwen_image_21

    again = write_tiny_qwen_image_21(tmp_path / "again", seed=0)
    for name in ("transformer/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.safetensors",
                 "text_encoder/model.safetensors", "processor/tokenizer.json"):
        assert (again / name).read_bytes() == (tiny_dir / name).read_bytes(), name


def test_pipeline_loads_with_the_checkpoint_processor(pipe: Any) -> None:
    assert type(pipe.processor).__name__ == "Qwen3VLProcessor"
    assert type(pipe.processor.video_processor).__name__ == "Qwen3VLVideoProcessor"
    # The system turn the pipeline drops: counted from our template, it must be the real rendering.
    assert pipe._drop_idx == len(pipe.processor.tokenizer(SYSTEM_TURN)["input_ids"])
    config = pipe.text_encoder.config
    tokenizer = pipe.processor.tokenizer
    assert config.image_token_id == tokenizer.convert_tokens_to_ids("<|image_pad|>") == pipe._img_token_id
    assert config.vision_start_token_id == tokenizer.convert_tokens_to_ids("<|vision_start|>")
    assert config.text_config.head_dim >= 32


def test_generation_depends_on_prompt_and_seed(pipe: Any) -> None:
    base = _generate(pipe, "a red circle", 0)
    assert base.shape == (OUTPUT_RESOLUTION, OUTPUT_RESOLUTION, 4)  # RGBA
    assert np.array_equal(base, _generate(pipe, "a red circle", 0))
    # Several grey levels, not rounding noise: the tiny model reacts.
    assert np.abs(base - _generate(pipe, "a blue square", 0)).max() > 0.05
    assert np.abs(base - _generate(pipe, "a red circle", 1)).max() > 0.05


def test_edit_with_one_and_two_references(pipe: Any) -> None:
    noise = Image.fromarray((np.random.default_rng(0).random((80, 96, 3)) * 255).astype(np.uint8))
    flat = Image.new("RGBA", (64, 64), (200, 30, 30, 128))
    one = _generate(pipe, "make it blue", 0, [noise])
    other = _generate(pipe, "make it blue", 0, [flat])
    two = _generate(pipe, "make it blue", 0, [noise, flat])
    # Size from the last reference's aspect ratio at output_resolution² (rounded to 32 px).
    assert one.shape[2] == two.shape[2] == 4
    assert np.abs(one - other).max() > 0.05  # the reference image matters
    assert two.shape == other.shape


def test_transformers_loads_text_encoder_and_processor(tiny_dir: Path) -> None:
    compat.install()
    from transformers import AutoProcessor, Qwen3VLForConditionalGeneration

    model = Qwen3VLForConditionalGeneration.from_pretrained(tiny_dir / "text_encoder")
    processor = AutoProcessor.from_pretrained(tiny_dir / "processor")
    assert type(processor).__name__ == "Qwen3VLProcessor"
    text = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is this?"}]}],
        add_generation_prompt=True,
    )
    assert text == "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>What is this?<|im_end|>\n<|im_start|>assistant\n"
    answers = []
    for colour in ((220, 30, 30), (30, 30, 220)):
        batch = processor(text=[text], images=[Image.new("RGB", (64, 64), colour)], return_tensors="pt")
        assert batch["image_grid_thw"].tolist() == [[1, 4, 4]]  # 16 px patches, 4 merged tokens
        with torch.no_grad():
            out = model.generate(**batch, max_new_tokens=4, do_sample=False)
        answers.append(out[0, batch["input_ids"].shape[1]:].tolist())
    assert answers[0] != answers[1], "the tiny Qwen3-VL ignores the image"
