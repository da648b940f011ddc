"""The tiny Qwen-Image checkpoint factory: public layout, consistent sizes, deterministic, loadable."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from diptych import compat
from diptych.models.qwen_image.tiny import SCHEDULER_CONFIG, text_hidden_size, write_tiny_qwen_image


def _json(path: Path) -> dict:
    return json.loads(path.read_text())


@pytest.mark.parametrize("edit", [False, True], ids=["generate", "edit"])
def test_layout_and_configs(edit: bool, request: pytest.FixtureRequest) -> None:
    root: Path = request.getfixturevalue("tiny_qwen_image_edit_dir" if edit else "tiny_qwen_image_dir")
    index = _json(root / "model_index.json")
    assert index["_class_name"] == ("QwenImageEditPipeline" if edit else "QwenImagePipeline")
    assert index["transformer"] == ["diffusers", "QwenImageTransformer2DModel"]
    assert index["vae"] == ["diffusers", "AutoencoderKLQwenImage"]
    assert index["scheduler"] == ["diffusers", "FlowMatchEulerDiscreteScheduler"]
    assert index["text_encoder"] == ["transformers", "Qwen2_5_VLForConditionalGeneration"]
    assert index["tokenizer"] == ["transformers", "Qwen2Tokenizer"]
    assert ("processor" in index) == edit
    for folder in ("transformer", "vae", "scheduler", "text_encoder", "tokenizer", "processor"):
        assert (root / folder).is_dir(), folder
    assert (root / "transformer" / "diffusion_pytorch_model.safetensors").is_file()
    assert (root / "vae" / "diffusion_pytorch_model.safetensors").is_file()

    transformer = _json(root / "transformer" / "config.json")
    vae = _json(root / "vae" / "config.json")
    assert transformer["joint_attention_dim"] == text_hidden_size(root / "text_encoder")
    assert transformer["attention_head_dim"] >= 32
    assert sum(transformer["axes_dims_rope"]) == transformer["attention_head_dim"]
    assert transformer["in_channels"] == 4 * vae["z_dim"] and transformer["out_channels"] == vae["z_dim"]
    assert len(vae["latents_mean"]) == len(vae["latents_std"]) == vae["z_dim"]
    assert min(vae["latents_std"]) > 0

    scheduler = _json(root / "scheduler" / "scheduler_config.json")
    assert scheduler["_class_name"] == "FlowMatchEulerDiscreteScheduler"
    assert {k: scheduler[k] for k in SCHEDULER_CONFIG} == SCHEDULER_CONFIG
    assert scheduler["use_dynamic_shifting"] and scheduler["shift_terminal"] == 0.02


def test_deterministic_from_seed(tiny_qwen_image_dir: Path, tmp_path: Path) -> None:
    again = write_tiny_qwen_image(tmp_path / "again", seed=0)
    other = write_tiny_qwen_image(tmp_path / "other", seed=1)
    for part in ("transformer/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.safetensors"):
        assert (again / part).read_bytes() == (tiny_qwen_image_dir / part).read_bytes(), part
        assert (other / part).read_bytes() != (tiny_qwen_image_dir / part).read_bytes(), part
    assert (again / "vae/config.json").read_text() == (tiny_qwen_image_dir / "vae/config.json").read_text()


def test_loads_in_diffusers_and_transformers(tiny_qwen_image_dir: Path, tiny_qwen_image_edit_dir: Path) -> None:
    compat.install()
    from diffusers import QwenImageEditPipeline, QwenImagePipeline
    from transformers import Qwen2_5_VLForConditionalGeneration, Qwen2Tokenizer, Qwen2VLProcessor

    generate = QwenImagePipeline.from_pretrained(tiny_qwen_image_dir)
    edit = QwenImageEditPipeline.from_pretrained(tiny_qwen_image_edit_dir)
    assert isinstance(edit.processor, Qwen2VLProcessor)
    assert generate.vae_scale_factor == 8
    text_encoder = Qwen2_5_VLForConditionalGeneration.from_pretrained(tiny_qwen_image_dir / "text_encoder")
    tokenizer = Qwen2Tokenizer.from_pretrained(tiny_qwen_image_dir / "tokenizer")
    assert text_encoder.config.text_config.hidden_size == generate.transformer.config.joint_attention_dim
    assert tokenizer.convert_tokens_to_ids("<|im_start|>") < text_encoder.config.text_config.vocab_size
