"""End to end over real HTTP with the official openai SDK and httpx: the three tasks."""

from __future__ import annotations

import base64
import io

import httpx
import openai
import pytest
from PIL import Image

from diptych.bench.server_process import ServerProcess

MODEL = "tiny-qwen-image-edit"


def png_data_url(colour: tuple[int, int, int] = (255, 0, 0), size: int = 56) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def vqa_messages(colour: tuple[int, int, int] = (255, 0, 0)) -> list[dict]:
    return [
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": png_data_url(colour)}},
                {"type": "text", "text": "What colour is the picture?"},
            ],
        }
    ]


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0, timeout=120)


def test_models_reports_family_and_capabilities(client: openai.OpenAI) -> None:
    models = client.models.list().data
    assert [m.id for m in models] == [MODEL]
    extra = models[0].model_extra or {}
    assert extra["family"] == "qwen-image"
    assert extra["capabilities"]["tasks"] == ["understand", "generate", "edit"]


def test_chat_with_image_plain_and_streamed(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model=MODEL, messages=vqa_messages(), max_tokens=12, temperature=0  # type: ignore[arg-type]
    )
    text = completion.choices[0].message.content
    assert text and completion.usage is not None
    assert completion.usage.completion_tokens >= 1 and completion.usage.prompt_tokens > 10

    stream = client.chat.completions.create(
        model=MODEL, messages=vqa_messages(), max_tokens=12, temperature=0, stream=True,  # type: ignore[arg-type]
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == text  # greedy: streaming changes the transport, not the tokens
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == completion.usage.completion_tokens


def test_chat_over_httpx(server: ServerProcess) -> None:
    response = httpx.post(
        f"{server.base_url}/v1/chat/completions",
        json={"model": MODEL, "messages": vqa_messages((0, 0, 255)), "max_tokens": 4, "temperature": 0},
        timeout=120,
    )
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["finish_reason"] in ("stop", "length")


@pytest.mark.parametrize(("fmt", "pil_format"), [("png", "PNG"), ("jpeg", "JPEG"), ("webp", "WEBP")])
def test_generate_b64_in_each_format(client: openai.OpenAI, fmt: str, pil_format: str) -> None:
    result = client.images.generate(
        model=MODEL, prompt="a red circle", size="64x48", response_format="b64_json",  # type: ignore[arg-type]
        output_format=fmt, extra_body={"num_inference_steps": 2, "seed": 1},  # type: ignore[arg-type]
    )
    assert result.data and len(result.data) == 1
    image = Image.open(io.BytesIO(base64.b64decode(result.data[0].b64_json or "")))
    assert image.format == pil_format and image.size == (64, 48)


def test_edit_with_file_upload(client: openai.OpenAI) -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (0, 200, 0)).save(buffer, format="PNG")
    result = client.images.edit(
        model=MODEL, image=("source.png", buffer.getvalue(), "image/png"), prompt="make it blue",
        size="64x64", extra_body={"num_inference_steps": 2, "seed": 3},
    )
    image = Image.open(io.BytesIO(base64.b64decode(result.data[0].b64_json or "")))  # type: ignore[index]
    assert image.size == (64, 64)


def test_generate_streams_partial_images_to_the_sdk(client: openai.OpenAI) -> None:
    stream = client.images.generate(
        model=MODEL, prompt="a blue square", size="32x32", stream=True, partial_images=2,  # type: ignore[arg-type]
        extra_body={"num_inference_steps": 6, "seed": 2},
    )
    events = list(stream)
    types = [e.type for e in events]
    assert types == ["image_generation.partial_image"] * 2 + ["image_generation.completed"]
    assert [e.partial_image_index for e in events[:2]] == [0, 1]  # type: ignore[union-attr]


def test_edit_streams_partial_images_to_the_sdk(client: openai.OpenAI) -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (48, 48), (200, 120, 0)).save(buffer, format="PNG")
    stream = client.images.edit(
        model=MODEL, image=("source.png", buffer.getvalue(), "image/png"), prompt="make it blue", size="32x32",
        stream=True, partial_images=2, extra_body={"num_inference_steps": 6, "seed": 2},
    )
    events = list(stream)
    assert [e.type for e in events] == ["image_edit.partial_image"] * 2 + ["image_edit.completed"]
    assert [e.partial_image_index for e in events[:2]] == [0, 1]  # type: ignore[union-attr]
    # Previews at evenly spaced steps, with our progress extension.
    assert [(e.model_extra or {})["progress"] for e in events[:2]] == [{"step": 2, "total": 6}, {"step": 4, "total": 6}]
    for event in events:
        assert Image.open(io.BytesIO(base64.b64decode(event.b64_json))).size == (32, 32)


def test_bad_input_over_http_keeps_the_server_healthy(server: ServerProcess) -> None:
    url = server.base_url
    cases = [
        httpx.post(f"{url}/v1/chat/completions", content=b"{", headers={"content-type": "application/json"}),
        httpx.post(f"{url}/v1/chat/completions", json={"model": "nope", "messages": vqa_messages()}),
        httpx.post(f"{url}/v1/images/generations", json={"prompt": "x", "size": "100x100"}),
        httpx.post(f"{url}/v1/images/generations", json={"prompt": "x", "n": 99}),
        httpx.post(f"{url}/v1/images/generations", json={"prompt": "x", "num_inference_steps": 100000}),
        httpx.post(f"{url}/v1/images/generations", json={"prompt": "word " * 5000}),
        httpx.post(f"{url}/v1/images/edits", data={"prompt": "x"},
                   files={"image": ("a.png", b"", "image/png")}),
    ]
    statuses = [r.status_code for r in cases]
    assert statuses == [400, 404, 400, 400, 400, 400, 400], [r.text for r in cases]
    for response in cases:
        assert set(response.json()["error"]) == {"message", "type", "param", "code"}
    assert httpx.get(f"{url}/health").json()["status"] == "ok"
