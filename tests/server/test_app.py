"""The gateway over an in-process ASGI transport with a scripted engine: schemas, errors, SSE, auth, limits."""

from __future__ import annotations

import base64
import io
import json

import pytest
from PIL import Image

from tests.server.conftest import data_url, png_bytes
from diptych.types import SamplingOptions
from tests.server.fake_engine import FakeEngine


def assert_envelope(response, status: int, param: str | None = None) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and error["message"]
    if param is not None:
        assert error["param"] == param
    return error


def chat_body(**overrides: object) -> dict:
    body: dict = {
        "model": "tiny",
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "image_url", "image_url": {"url": data_url(png_bytes())}},
                    {"type": "text", "text": "what colour is the square?"},
                ],
            }
        ],
        "max_tokens": 8,
    }
    body.update(overrides)
    return body


async def test_chat_completion_shape_and_engine_request(make_client) -> None:
    engine = FakeEngine()
    client = make_client(engine)
    response = await client.post("/v1/chat/completions", json=chat_body(temperature=0, seed=3, stop="x"))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "The circle is red."}
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["usage"] == {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}
    (request,) = engine.chat_requests
    assert request.sampling.temperature == 0 and request.sampling.seed == 3 and request.sampling.stop == ("x",)
    image_part = request.messages[0].content[0]
    assert image_part.image.size == (32, 32) and image_part.image.getpixel((0, 0)) == (0, 0, 255)


async def test_chat_stream_is_sse_with_done_and_usage(make_client) -> None:
    client = make_client()
    body = chat_body(stream=True, stream_options={"include_usage": True})
    async with client.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line async for line in response.aiter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(line[6:]) for line in lines[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == "The circle is red."
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == "stop"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["total_tokens"] == 8


async def test_chat_choices_come_back_by_index(make_client) -> None:
    client = make_client()
    completion = (await client.post("/v1/chat/completions", json=chat_body(n=2))).json()
    assert [(c["index"], c["message"]["content"], c["finish_reason"]) for c in completion["choices"]] == [
        (0, "The circle is red.", "stop"), (1, "The circle is red.", "stop")]
    assert completion["usage"]["completion_tokens"] == 6  # both choices' tokens

    async with client.stream("POST", "/v1/chat/completions", json=chat_body(n=2, stream=True)) as response:
        chunks = [json.loads(line[6:]) async for line in response.aiter_lines()
                  if line.startswith("data: ") and line != "data: [DONE]"]
    texts = {0: "", 1: ""}
    finishes = {}
    for chunk in chunks:
        (choice,) = chunk["choices"]
        texts[choice["index"]] += choice["delta"].get("content", "")
        if choice["finish_reason"]:
            finishes[choice["index"]] = choice["finish_reason"]
    assert texts == {0: "The circle is red.", 1: "The circle is red."} and finishes == {0: "stop", 1: "stop"}
    # Each choice opens with its role.
    assert [c["choices"][0]["index"] for c in chunks if "role" in c["choices"][0]["delta"]] == [0, 1]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "tiny"}, "messages"),
        (chat_body(temperature=5), "temperature"),
        (chat_body(max_tokens=0), "max_tokens"),
        (chat_body(n=0), "n"),
        (chat_body(unknown_field=1), "unknown_field"),
        (chat_body(messages=[]), "messages"),
    ],
)
async def test_chat_schema_violations_are_400_envelopes(make_client, body: dict, param: str) -> None:
    client = make_client()
    error = assert_envelope(await client.post("/v1/chat/completions", json=body), 400)
    assert error["param"].startswith(param)


async def test_invalid_json_is_400(make_client) -> None:
    client = make_client()
    response = await client.post(
        "/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert_envelope(response, 400)


@pytest.mark.parametrize(
    ("url", "code"),
    [
        ("data:image/png;base64,!!!notbase64", "invalid_base64"),
        ("data:image/png;base64,", "invalid_image"),
        (data_url(b"this is not an image"), "invalid_image"),
        (data_url(png_bytes()[:40]), "invalid_image"),
        ("https://example.com/cat.png", "remote_images_disabled"),
        ("file:///etc/passwd", "invalid_image_url"),
    ],
)
async def test_bad_images_are_400(make_client, url: str, code: str) -> None:
    engine = FakeEngine()
    client = make_client(engine)
    body = chat_body()
    body["messages"][0]["content"][0]["image_url"]["url"] = url
    error = assert_envelope(await client.post("/v1/chat/completions", json=body), 400)
    assert error["code"] == code
    assert engine.chat_requests == []
    assert (await client.get("/health")).status_code == 200


async def test_decompression_bomb_is_refused_from_its_header(make_client) -> None:
    client = make_client(max_input_pixels=64 * 64)
    body = chat_body()
    body["messages"][0]["content"][0]["image_url"]["url"] = data_url(png_bytes((65, 64)))
    error = assert_envelope(await client.post("/v1/chat/completions", json=body), 400)
    assert error["code"] == "image_too_large"


async def test_unknown_model_is_404(make_client) -> None:
    client = make_client()
    error = assert_envelope(await client.post("/v1/chat/completions", json=chat_body(model="gpt-9")), 404, "model")
    assert error["code"] == "model_not_found"
    assert_envelope(await client.post("/v1/images/generations", json={"prompt": "x", "model": "gpt-9"}), 404)


async def test_body_too_large_is_413(make_client) -> None:
    client = make_client(max_body_bytes=2048)
    response = await client.post("/v1/chat/completions", json=chat_body(user="x" * 5000))
    assert_envelope(response, 413)


@pytest.mark.parametrize("fmt", ["png", "jpeg", "webp"])
async def test_generation_returns_b64_images_in_the_format(make_client, fmt: str) -> None:
    engine = FakeEngine()
    client = make_client(engine)
    response = await client.post(
        "/v1/images/generations",
        json={"prompt": "a red circle", "n": 2, "size": "48x32", "output_format": fmt, "seed": 7,
              "negative_prompt": "blurry", "num_inference_steps": 3, "guidance_scale": 2.5},
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["output_format"] == fmt and body["size"] == "48x32" and len(body["data"]) == 2
    image = Image.open(io.BytesIO(base64.b64decode(body["data"][0]["b64_json"])))
    assert image.format == {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}[fmt]
    assert image.size == (48, 32)
    (request,) = engine.image_requests
    assert (request.seed, request.negative_prompt, request.num_inference_steps, request.guidance_scale) == (
        7, "blurry", 3, 2.5)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"prompt": ""}, "prompt"),
        ({"prompt": "x", "size": "big"}, "size"),
        ({"prompt": "x", "response_format": "url"}, "response_format"),
        ({"prompt": "x", "partial_images": 4}, "partial_images"),
        ({"prompt": "x", "n": 0}, "n"),
        ({"prompt": "x", "output_format": "gif"}, "output_format"),
        ({"prompt": "x", "guidance_scale": -1}, "guidance_scale"),
        ({"prompt": "x", "promt": "typo"}, "promt"),
    ],
)
async def test_generation_schema_violations_are_400(make_client, body: dict, param: str) -> None:
    client = make_client()
    assert_envelope(await client.post("/v1/images/generations", json=body), 400, param)


async def test_generation_stream_events(make_client) -> None:
    client = make_client()
    body = {"prompt": "x", "stream": True, "partial_images": 2, "size": "32x32"}
    async with client.stream("POST", "/v1/images/generations", json=body) as response:
        assert response.status_code == 200
        events = [json.loads(line[6:]) async for line in response.aiter_lines() if line.startswith("data: ")]
    types = [e["type"] for e in events]
    assert types == ["image_generation.partial_image"] * 2 + ["image_generation.completed"]
    assert [e["partial_image_index"] for e in events[:2]] == [0, 1]
    assert events[0]["progress"] == {"step": 1, "total": 2}
    final = Image.open(io.BytesIO(base64.b64decode(events[-1]["b64_json"])))
    assert final.getpixel((0, 0)) == (200, 30, 30)


async def test_edit_multipart(make_client) -> None:
    engine = FakeEngine()
    client = make_client(engine)
    response = await client.post(
        "/v1/images/edits",
        data={"prompt": "make it green", "n": "1", "seed": "5", "size": "32x32"},
        files={"image": ("source.png", png_bytes((40, 30)), "image/png")},
    )
    assert response.status_code == 200, response.text
    (request,) = engine.image_requests
    assert request.is_edit and request.seed == 5 and request.source_images[0].size == (40, 30)


@pytest.mark.parametrize(
    ("data", "files", "param"),
    [
        ({"prompt": "x"}, None, "image"),
        ({"prompt": "x"}, {"image": ("a.png", b"", "image/png")}, "image"),
        ({"prompt": "x"}, {"image": ("a.png", b"garbage", "image/png")}, "image"),
        ({"prompt": "x", "n": "many"}, {"image": ("a.png", png_bytes(), "image/png")}, "n"),
        ({}, {"image": ("a.png", png_bytes(), "image/png")}, "prompt"),
        (
            {"prompt": "x"},
            {"image": ("a.png", png_bytes((32, 32)), "image/png"), "mask": ("m.png", png_bytes((16, 16)), "image/png")},
            "mask",
        ),
    ],
)
async def test_edit_bad_input_is_400(make_client, data: dict, files: dict | None, param: str) -> None:
    client = make_client()
    if files is None:
        # A multipart body with form fields only (no file part).
        response = await client.post("/v1/images/edits", files={k: (None, v) for k, v in data.items()})
    else:
        response = await client.post("/v1/images/edits", data=data, files=files)
    assert_envelope(response, 400, param)


async def test_edit_against_a_model_without_edit_names_the_capability(make_client) -> None:
    client = make_client(FakeEngine(edit=False))
    response = await client.post(
        "/v1/images/edits", data={"prompt": "x"}, files={"image": ("a.png", png_bytes(), "image/png")}
    )
    error = assert_envelope(response, 400)
    assert "edit" in error["message"]


async def test_queue_full_is_429_with_retry_after(make_client) -> None:
    engine = FakeEngine(queue_depth=1)
    client = make_client(engine)
    with engine.gate.admit():  # one request already in flight fills the queue
        response = await client.post("/v1/images/generations", json={"prompt": "x"})
    error = assert_envelope(response, 429)
    assert error["code"] == "queue_full"
    assert int(response.headers["retry-after"]) >= 1
    assert (await client.post("/v1/images/generations", json={"prompt": "x"})).status_code == 200


async def test_deadline_is_504(make_client) -> None:
    client = make_client(FakeEngine(delay_s=0.01, deadline_s=0.0))
    assert_envelope(await client.post("/v1/images/generations", json={"prompt": "x"}), 504)


async def test_models_lists_capabilities(make_client) -> None:
    client = make_client(FakeEngine(edit=False))
    body = (await client.get("/v1/models")).json()
    (model,) = body["data"]
    assert model["id"] == "tiny" and model["family"] == "fake"
    assert model["capabilities"]["tasks"] == ["understand", "generate"]
    assert (await client.get("/v1/models/tiny")).status_code == 200
    assert_envelope(await client.get("/v1/models/other"), 404)


async def test_api_keys(make_client) -> None:
    client = make_client(api_keys="k1,k2")
    assert (await client.get("/health")).status_code == 200
    assert_envelope(await client.get("/v1/models"), 401)
    assert_envelope(await client.get("/v1/models", headers={"Authorization": "Bearer nope"}), 401)
    assert_envelope(await client.get("/metrics"), 401)
    assert (await client.get("/v1/models", headers={"Authorization": "Bearer k2"})).status_code == 200


async def test_metrics_exposes_requests_latency_and_engine_gauges(make_client) -> None:
    client = make_client()
    await client.post("/v1/chat/completions", json=chat_body())
    await client.post("/v1/chat/completions", json=chat_body(model="nope"))
    text = (await client.get("/metrics")).text
    assert 'diptych_requests_total{endpoint="/v1/chat/completions",status="200"} 1.0' in text
    assert 'diptych_requests_total{endpoint="/v1/chat/completions",status="404"} 1.0' in text
    assert 'diptych_request_duration_seconds_count{endpoint="/v1/chat/completions",status="200"} 1.0' in text
    assert 'diptych_queue_depth{engine="image"} 0.0' in text
    assert 'diptych_active_batch_size{engine="flow"} 0.0' in text
    assert "diptych_generated_tokens_total 7.0" in text
    assert "diptych_denoising_steps_total 11.0" in text
    for line in ('diptych_flow_cache_hits_total{cache="prefix"} 3.0', 'diptych_flow_cache_misses_total{cache="prefix"} 2.0',
                 'diptych_flow_cache_bytes{cache="prefix"} 4096.0', 'diptych_flow_cache_entries{cache="prefix"} 1.0'):
        assert line in text


async def test_chat_sampling_fields_reach_the_engine(make_client) -> None:
    engine = FakeEngine()
    client = make_client(engine)
    response = await client.post("/v1/chat/completions", json=chat_body(
        max_completion_tokens=12, temperature=0.5, top_p=0.9, top_k=5, min_p=0.1, seed=4, stop=["x"],
        stop_token_ids=[7, 8], ignore_eos=True, min_tokens=3, repetition_penalty=1.2, presence_penalty=0.5,
        frequency_penalty=-0.5, logit_bias={"11": -100, "12": 2.5}, skip_special_tokens=False,
        include_stop_str_in_output=True, user="u", store=True, metadata={"k": "v"}, service_tier="default"))
    assert response.status_code == 200, response.text
    assert engine.chat_requests[-1].sampling == SamplingOptions(
        max_tokens=12, temperature=0.5, top_p=0.9, top_k=5, seed=4, stop=("x",), ignore_eos=True, min_tokens=3,
        min_p=0.1, repetition_penalty=1.2, presence_penalty=0.5, frequency_penalty=-0.5, stop_token_ids=(7, 8),
        logit_bias=((11, -100.0), (12, 2.5)), skip_special_tokens=False, include_stop_str_in_output=True)


async def test_unknown_route_is_404_envelope(make_client) -> None:
    client = make_client()
    assert_envelope(await client.get("/v1/nothing"), 404)


@pytest.mark.parametrize("path", ["/v1/images/generations", "/v1/chat/completions"])
async def test_a_quiet_stream_gets_keep_alive_comments(make_client, path: str) -> None:
    # Each engine step takes 0.3 s and the stream sends nothing in between (no partial images).
    client = make_client(FakeEngine(delay_s=0.3), sse_keepalive_s=0.05)
    body = {"prompt": "x", "stream": True, "size": "32x32"} if path.endswith("generations") else chat_body(stream=True)
    async with client.stream("POST", path, json=body) as response:
        assert response.status_code == 200
        raw = b"".join([chunk async for chunk in response.aiter_bytes()])
    assert b"\r\n" not in raw  # OpenAI's streams end lines with a bare newline
    lines = raw.decode().split("\n")
    pings = [line for line in lines if line.startswith(":")]
    assert len(pings) >= 4 and set(pings) == {": keep-alive"}
    data = [json.loads(line[6:]) for line in lines if line.startswith("data: ") and line != "data: [DONE]"]
    assert data and all(isinstance(d, dict) for d in data)


async def test_a_busy_stream_needs_no_keep_alive(make_client) -> None:
    client = make_client(FakeEngine(), sse_keepalive_s=30)
    async with client.stream("POST", "/v1/chat/completions", json=chat_body(stream=True)) as response:
        raw = b"".join([chunk async for chunk in response.aiter_bytes()])
    assert b": keep-alive" not in raw and raw.rstrip().endswith(b"data: [DONE]")


async def test_models_report_the_serving_dtype(make_client) -> None:
    body = (await make_client().get("/v1/models")).json()
    assert body["data"][0]["dtype"] == "float32"
