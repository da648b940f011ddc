"""Qwen-Image 2.1 end to end (understanding only, so far): a real server on the tiny checkpoint, the openai SDK."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from PIL import Image

from diptych.bench.server_process import serving
from tests.conftest import TinyCheckpoint

MODEL = "tiny-qwen-image-2.1"


@pytest.fixture(scope="module")
def client(tiny_checkpoint: TinyCheckpoint, tmp_path_factory: pytest.TempPathFactory) -> Iterator[openai.OpenAI]:
    checkpoint: Path = tiny_checkpoint("qwen-image-2.1")
    with serving(checkpoint, tmp_path_factory.mktemp("qi21-server"), "--served-model-name", MODEL) as process:
        yield openai.OpenAI(base_url=f"{process.base_url}/v1", api_key="unused", max_retries=0, timeout=300)


def _png(colour: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def test_models_lists_understanding_only(client: openai.OpenAI) -> None:
    (model,) = client.models.list().data
    extra = model.model_extra or {}
    assert model.id == MODEL and extra["family"] == "qwen-image-2.1"
    assert extra["capabilities"]["tasks"] == ["understand"]


def test_chat_with_an_image(client: openai.OpenAI) -> None:
    answers = []
    for colour in ((220, 20, 20), (20, 20, 220)):
        url = "data:image/png;base64," + base64.b64encode(_png(colour)).decode()
        completion = client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": [  # type: ignore[list-item]
                {"type": "image_url", "image_url": {"url": url}},
                {"type": "text", "text": "What is in this picture?"},
            ]}],
            max_tokens=8,
            temperature=0,
        )
        assert completion.usage is not None and completion.usage.completion_tokens >= 1
        answers.append(completion.choices[0].message.content)
    assert answers[0] != answers[1]


def test_generate_and_edit_are_refused_naming_the_capability(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.images.generate(model=MODEL, prompt="a red circle", size="64x64")
    assert "'generate' capability" in str(info.value)
    with pytest.raises(openai.BadRequestError) as info:
        client.images.edit(model=MODEL, image=("in.png", _png((0, 0, 0)), "image/png"), prompt="make it red")
    assert "'edit' capability" in str(info.value)
