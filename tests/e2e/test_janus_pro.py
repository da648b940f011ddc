"""Janus-Pro end to end: a real server on the tiny checkpoint, the official openai SDK over HTTP.

Images are compared with transformers' ``generate(generation_mode="image")`` + VQ decode
on the same checkpoint, in this test, converted to pixels as the deepseek-ai/Janus reference does.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import openai
import pytest
from PIL import Image

from diptych.bench.server_process import ServerProcess, serving
from tests.conftest import TinyCheckpoint
from tests.e2e.janus_reference import janus_reference_image
from tests.e2e.probes import assert_answers_follow_the_picture

MODEL = "tiny-janus"


@pytest.fixture(scope="module")
def janus_checkpoint(tiny_checkpoint: TinyCheckpoint) -> Path:
    return tiny_checkpoint("janus-pro")


@pytest.fixture(scope="module")
def janus_server(janus_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with serving(janus_checkpoint, tmp_path_factory.mktemp("janus-server"), "--served-model-name", MODEL) as process:
        yield process


@pytest.fixture(scope="module")
def client(janus_server: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{janus_server.base_url}/v1", api_key="unused", max_retries=0, timeout=300)


def test_models_lists_janus_capabilities(client: openai.OpenAI) -> None:
    (model,) = client.models.list().data
    extra = model.model_extra or {}
    assert model.id == MODEL and extra["family"] == "janus-pro"
    assert extra["capabilities"]["tasks"] == ["understand", "generate"]


def test_chat_with_an_image(client: openai.OpenAI) -> None:
    assert_answers_follow_the_picture(client, MODEL)


def test_generate_equals_transformers(client: openai.OpenAI, janus_checkpoint: Path) -> None:
    prompt = "a red cat on a mat"
    result = client.images.generate(
        model=MODEL, prompt=prompt, n=2, size="64x64",
        extra_body={"guidance_scale": 4.0, "temperature": 0.0, "top_k": 1, "seed": 3},
    )
    assert result.data is not None and len(result.data) == 2
    images = [np.asarray(Image.open(io.BytesIO(base64.b64decode(d.b64_json or ""))).convert("RGB")) for d in result.data]
    expected = janus_reference_image(janus_checkpoint, prompt, 4.0)
    for image in images:
        assert image.shape == (64, 64, 3)
        assert np.abs(image.astype(int) - expected).max() <= 1  # float rounding before truncation to uint8


def test_sampled_generation_follows_the_seed(client: openai.OpenAI) -> None:
    def sample(seed: int) -> bytes:
        result = client.images.generate(
            model=MODEL, prompt="a blue square", size="64x64",
            extra_body={"temperature": 1.0, "top_k": 100, "top_p": 0.95, "seed": seed},
        )
        assert result.data is not None
        return base64.b64decode(result.data[0].b64_json or "")

    assert sample(5) == sample(5)
    assert sample(5) != sample(6)


def test_edit_is_refused_naming_the_capability(client: openai.OpenAI) -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (0, 0, 0)).save(buffer, format="PNG")
    with pytest.raises(openai.BadRequestError) as info:
        client.images.edit(model=MODEL, image=("in.png", buffer.getvalue(), "image/png"), prompt="make it red")
    assert "edit" in str(info.value)
