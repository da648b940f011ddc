"""What the running server returns equals the reference libraries run here on the same checkpoint:
greedy VQA text against transformers' generate, images at a fixed seed against diffusers' pipelines."""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from diptych import compat
from diptych.bench.server_process import ServerProcess

MODEL = "tiny-qwen-image-edit"


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def decode(b64: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB")


def pattern(width: int, height: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def assert_within_one_level(ours: Image.Image, reference: Image.Image) -> None:
    a = np.asarray(ours, dtype=np.int16)
    b = np.asarray(reference.convert("RGB"), dtype=np.int16)
    assert a.shape == b.shape
    assert np.abs(a - b).max() <= 1, f"max pixel difference {np.abs(a - b).max()}"


@pytest.fixture(scope="module")
def reference_vlm(edit_checkpoint: Path) -> tuple[Any, Any]:
    compat.install()
    from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(edit_checkpoint / "text_encoder",
                                                               torch_dtype=torch.float32)
    return model.eval(), AutoProcessor.from_pretrained(edit_checkpoint / "processor")


@pytest.mark.parametrize("colour", [(255, 0, 0), (20, 200, 90)])
def test_greedy_vqa_equals_transformers(
    server: ServerProcess, reference_vlm: tuple[Any, Any], colour: tuple[int, int, int]
) -> None:
    image = pattern(56, 56, sum(colour))
    question = "What is in the picture?"
    data_url = "data:image/png;base64," + base64.b64encode(png_bytes(image)).decode()
    response = httpx.post(
        f"{server.base_url}/v1/chat/completions",
        json={"model": MODEL, "max_tokens": 12, "temperature": 0, "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": data_url}}, {"type": "text", "text": question}]}]},
        timeout=120,
    )
    assert response.status_code == 200, response.text
    ours = response.json()["choices"][0]["message"]["content"]

    model, processor = reference_vlm
    conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    text = processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
    inputs = processor(text=[text], images=[image], return_tensors="pt")
    with torch.no_grad():
        generated = model.generate(**inputs, max_new_tokens=12, do_sample=False)
    new_tokens = generated[0, inputs["input_ids"].shape[1]:]
    reference = processor.tokenizer.decode(new_tokens, skip_special_tokens=True)
    assert len(new_tokens) >= 1
    assert ours == reference


@pytest.fixture(scope="module")
def reference_pipelines(edit_checkpoint: Path) -> tuple[Any, Any]:
    compat.install()
    from diffusers import QwenImageEditPipeline, QwenImagePipeline

    from diptych.models.qwen_image.flow import QwenImageFlowRunner

    edit = QwenImageEditPipeline.from_pretrained(edit_checkpoint)
    generate = QwenImagePipeline(scheduler=edit.scheduler, vae=edit.vae, text_encoder=edit.text_encoder,
                                 tokenizer=edit.tokenizer, transformer=edit.transformer)
    # diffusers hard-codes the real tokenizer's template length; both sides must drop the same prefix.
    encoder = QwenImageFlowRunner(edit_checkpoint, "cpu").prompt_encoder
    generate.prompt_template_encode_start_idx = encoder.generate_prefix_len
    edit.prompt_template_encode_start_idx = encoder.edit_prefix_len
    for pipe in (generate, edit):
        pipe.set_progress_bar_config(disable=True)
    return generate, edit


def test_generated_image_equals_diffusers(server: ServerProcess, reference_pipelines: tuple[Any, Any]) -> None:
    body = {"model": MODEL, "prompt": "a red circle to the left of a blue square", "size": "64x48", "seed": 11,
            "num_inference_steps": 3, "guidance_scale": 3.0, "negative_prompt": "blurry", "output_format": "png"}
    response = httpx.post(f"{server.base_url}/v1/images/generations", json=body, timeout=120)
    assert response.status_code == 200, response.text
    ours = decode(response.json()["data"][0]["b64_json"])

    generate, _ = reference_pipelines
    reference = generate(prompt=body["prompt"], negative_prompt="blurry", true_cfg_scale=3.0, num_inference_steps=3,
                         width=64, height=48, generator=torch.Generator().manual_seed(11), output_type="pil").images[0]
    assert_within_one_level(ours, reference)


def test_edited_image_equals_diffusers(server: ServerProcess, reference_pipelines: tuple[Any, Any]) -> None:
    source = pattern(48, 40, 5)
    fields = {"model": MODEL, "prompt": "make the square green", "size": "64x64", "seed": "4",
              "num_inference_steps": "2", "guidance_scale": "2.0", "output_format": "png"}
    response = httpx.post(f"{server.base_url}/v1/images/edits", data=fields,
                          files={"image": ("source.png", png_bytes(source), "image/png")}, timeout=180)
    assert response.status_code == 200, response.text
    ours = decode(response.json()["data"][0]["b64_json"])

    _, edit = reference_pipelines
    reference = edit(image=source, prompt=fields["prompt"], negative_prompt=" ", true_cfg_scale=2.0,
                     num_inference_steps=2, width=64, height=64, generator=torch.Generator().manual_seed(4),
                     output_type="pil").images[0]
    assert_within_one_level(ours, reference)
