"""Qwen-Image 2.1 end to end: a real server on the tiny checkpoint, the openai SDK, diffusers as the reference."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import openai
import pytest
import torch
from PIL import Image

from diptych import compat
from diptych.bench.server_process import ServerProcess, serving
from tests.e2e.probes import assert_answers_follow_the_picture, metric, wait_until
from diptych.models.qwen_image_21.tiny import OUTPUT_RESOLUTION
from tests.conftest import TinyCheckpoint

compat.install()

from diffusers import QwenImage21Pipeline  # noqa: E402  (after compat.install)

MODEL = "tiny-qwen-image-2.1"
CACHE_GIB = 0.0005


@pytest.fixture(scope="module")
def server(tiny_checkpoint: TinyCheckpoint, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    checkpoint: Path = tiny_checkpoint("qwen-image-2.1")
    # A cache of about three tiny edits' prefixes (roughly 0.15 MB each): later requests push a
    # request's prefix out of it, so what an ended request left behind would show (test below).
    with serving(checkpoint, tmp_path_factory.mktemp("qi21-server"), "--served-model-name", MODEL,
                 "--flow-cache-gib", str(CACHE_GIB)) as process:
        yield process


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0, timeout=300)


@pytest.fixture(scope="module")
def pipe(tiny_checkpoint: TinyCheckpoint) -> Any:
    pipeline = QwenImage21Pipeline.from_pretrained(tiny_checkpoint("qwen-image-2.1"))
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _solid(colour: tuple[int, ...], size: tuple[int, int] = (64, 48)) -> Image.Image:
    return Image.new("RGBA" if len(colour) == 4 else "RGB", size, colour)


def _decode(b64: str | None) -> Image.Image:
    assert b64 is not None
    return Image.open(io.BytesIO(base64.b64decode(b64)))


def _assert_close(ours: Image.Image, reference: Image.Image) -> None:
    assert (ours.mode, ours.size) == (reference.mode, reference.size)
    difference = np.abs(np.asarray(ours, dtype=np.int16) - np.asarray(reference, dtype=np.int16))
    assert difference.max() <= 1, f"max pixel difference {difference.max()}"


def test_models_lists_every_task_and_the_reference_rules(client: openai.OpenAI) -> None:
    (model,) = client.models.list().data
    extra = model.model_extra or {}
    assert model.id == MODEL and extra["family"] == "qwen-image-2.1"
    caps = extra["capabilities"]
    assert caps["tasks"] == ["understand", "generate", "edit"]
    assert caps["max_source_images"] == 10 and caps["output_resolution"] == OUTPUT_RESOLUTION
    assert caps["reference_alpha"] is True and caps["image_size_multiple"] == 32
    assert caps["tool_parser"] == "hermes"  # Qwen3-VL's template renders tools


def test_chat_with_an_image(client: openai.OpenAI) -> None:
    assert_answers_follow_the_picture(client, MODEL)


WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "strict": True,  # OpenAI's switch: the arguments are held to the schema
        "parameters": {"type": "object", "properties": {"city": {"type": "string", "enum": ["Paris", "Oslo"]}},
                       "required": ["city"], "additionalProperties": False},
    },
}
TIME = {"type": "function", "function": {"name": "get_time", "strict": True, "parameters": {
    "type": "object", "properties": {"utc": {"type": "boolean"}}, "required": ["utc"], "additionalProperties": False}}}


def _arguments_valid(call: Any) -> None:
    import jsonschema

    schema = {"get_weather": WEATHER, "get_time": TIME}[call.function.name]["function"]["parameters"]
    jsonschema.validate(json.loads(call.function.arguments), schema)


@pytest.fixture(scope="module")
def no_whitespace(tiny_checkpoint: TinyCheckpoint) -> dict[str, int]:
    """A logit bias against whitespace-only tokens: JSON may hold any amount of whitespace, and
    the random model, once greedy on one, would fill max_tokens with it."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_checkpoint("qwen-image-2.1") / "processor")
    return {str(i): -100 for i in tokenizer.get_vocab().values() if not tokenizer.decode([i]).strip()}


@pytest.mark.parametrize("tool_choice", ["required", {"type": "function", "function": {"name": "get_time"}}],
                         ids=["required", "named"])
def test_forced_tool_calls_follow_the_tools_schemas(client: openai.OpenAI, tool_choice: Any,
                                                    no_whitespace: dict[str, int]) -> None:
    # One call at most: the random model would otherwise go on calling until max_tokens.
    request = {"model": MODEL, "messages": [{"role": "user", "content": "What is the weather in Paris?"}],
               "tools": [WEATHER, TIME], "tool_choice": tool_choice, "parallel_tool_calls": False,
               "max_tokens": 96, "temperature": 0, "logit_bias": no_whitespace}
    completion = client.chat.completions.create(**request)
    choice = completion.choices[0]
    calls = choice.message.tool_calls
    assert calls is not None and len(calls) == 1, choice
    for call in calls:
        assert call.id and call.type == "function"
        _arguments_valid(call)
    if tool_choice == "required":
        assert choice.finish_reason == "tool_calls"
    else:
        assert choice.finish_reason == "stop" and [c.function.name for c in calls] == ["get_time"]

    # Streamed, the same greedy calls arrive as deltas: the id and name first, then the arguments.
    stream = client.chat.completions.create(**request, stream=True)
    streamed: dict[int, dict[str, str]] = {}
    finish = None
    for chunk in stream:
        for delta in chunk.choices[0].delta.tool_calls or []:
            call = streamed.setdefault(delta.index, {"name": "", "arguments": ""})
            call["name"] += (delta.function.name or "") if delta.function else ""
            call["arguments"] += (delta.function.arguments or "") if delta.function else ""
        finish = chunk.choices[0].finish_reason or finish
    assert [(c["name"], json.loads(c["arguments"])) for _, c in sorted(streamed.items())] == [
        (c.function.name, json.loads(c.function.arguments)) for c in calls]
    assert finish == choice.finish_reason


def test_a_tool_result_continues_the_chat(client: openai.OpenAI) -> None:
    messages = [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "What is the weather in Oslo?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call-1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}]},
        {"role": "tool", "tool_call_id": "call-1", "content": "Snow, -3 C."},
    ]
    completion = client.chat.completions.create(model=MODEL, messages=messages, tools=[WEATHER],  # type: ignore[arg-type]
                                                tool_choice="none", max_tokens=8, temperature=0)
    choice = completion.choices[0]
    assert choice.message.tool_calls is None and choice.finish_reason in ("stop", "length")
    assert completion.usage is not None and completion.usage.prompt_tokens > 40  # the tools and the result were rendered


def test_generated_image_equals_the_pipeline(client: openai.OpenAI, pipe: Any) -> None:
    result = client.images.generate(
        model=MODEL, prompt="a red circle", size="64x96",  # type: ignore[arg-type]
        extra_body={"seed": 5, "num_inference_steps": 3, "guidance_scale": 3.0, "negative_prompt": "blurry"},
    )
    assert result.data is not None
    reference = pipe("a red circle", height=96, width=64, num_inference_steps=3, true_cfg_scale=3.0,
                     negative_prompt="blurry", generator=torch.Generator().manual_seed(5),
                     output_resolution=OUTPUT_RESOLUTION).images[0]
    _assert_close(_decode(result.data[0].b64_json), reference)


def test_edit_with_two_references_equals_the_pipeline_streamed_or_not(client: openai.OpenAI, pipe: Any) -> None:
    wide, see_through = _solid((20, 200, 40), (96, 64)), _solid((220, 30, 30, 128), (128, 32))
    images = [("wide.png", _png(wide), "image/png"), ("alpha.png", _png(see_through), "image/png")]
    options = {"seed": 7, "num_inference_steps": 4, "guidance_scale": 2.5}
    # No size: the pipeline's rule, output_resolution² in the last reference's aspect (128x32 here).
    plain = client.images.edit(model=MODEL, image=images, prompt="put them side by side", extra_body=options)
    assert plain.data is not None
    reference = pipe("put them side by side", image=[wide, see_through], num_inference_steps=4, true_cfg_scale=2.5,
                     negative_prompt=" ", generator=torch.Generator().manual_seed(7),
                     output_resolution=OUTPUT_RESOLUTION).images[0]
    ours = _decode(plain.data[0].b64_json)
    assert ours.size == (128, 32)
    _assert_close(ours, reference)

    stream = client.images.edit(model=MODEL, image=images, prompt="put them side by side", stream=True,
                                partial_images=1, extra_body=options)  # type: ignore[call-overload]
    events = list(stream)
    assert [e.type for e in events] == ["image_edit.partial_image", "image_edit.completed"]
    assert np.array_equal(np.asarray(_decode(events[-1].b64_json)), np.asarray(ours))


@pytest.mark.parametrize(
    ("fields", "files", "param"),
    [
        ({"prompt": "x"}, [("image[]", ("a.png", _png(_solid((0, 0, 0))), "image/png"))] * 11, "image"),
        ({"prompt": "x"}, [("image[]", ("a.png", b"not an image", "image/png"))], "image"),
        ({"prompt": "x", "size": "80x64"}, [("image", ("a.png", _png(_solid((0, 0, 0))), "image/png"))], "size"),
        ({"prompt": "x", "n": "0"}, [("image", ("a.png", _png(_solid((0, 0, 0))), "image/png"))], "n"),
    ],
    ids=["too-many-references", "undecodable", "size", "n"],
)
def test_bad_edits_get_a_400_naming_the_field(
    server: ServerProcess, fields: dict[str, str], files: list[Any], param: str
) -> None:
    response = httpx.post(f"{server.base_url}/v1/images/edits", data={"model": MODEL, **fields}, files=files,
                          timeout=60)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param
    assert httpx.get(f"{server.base_url}/health", timeout=10).status_code == 200


def test_a_second_edit_of_the_same_picture_reuses_its_prefix(server: ServerProcess, client: openai.OpenAI,
                                                              pipe: Any) -> None:
    picture = _solid((120, 40, 160), (64, 64))
    image = ("picture.png", _png(picture), "image/png")
    results, hits = [], []
    for seed, instruction in ((11, "make it green"), (12, "turn it into a circle please")):
        hits.append(metric(server, "diptych_flow_cache_hits_total", cache="prefix"))
        result = client.images.edit(model=MODEL, image=image, prompt=instruction,
                                    extra_body={"seed": seed, "num_inference_steps": 3, "guidance_scale": 2.0})
        assert result.data is not None
        results.append(_decode(result.data[0].b64_json))
        reference = pipe(instruction, image=[picture], num_inference_steps=3, true_cfg_scale=2.0, negative_prompt=" ",
                         generator=torch.Generator().manual_seed(seed), output_resolution=OUTPUT_RESOLUTION).images[0]
        _assert_close(results[-1], reference)
    hits.append(metric(server, "diptych_flow_cache_hits_total", cache="prefix"))
    # The second edit found the picture's chunk (for its instruction) and the whole negative branch.
    assert hits[1] == hits[0] and hits[2] >= hits[1] + 2


def test_ended_and_cancelled_requests_leave_no_prefix_behind(server: ServerProcess) -> None:
    url = f"{server.base_url}/v1/images/edits"
    fields = {"model": MODEL, "prompt": "make it pale", "stream": "true", "partial_images": "2",
              "num_inference_steps": "30", "seed": "1"}
    with httpx.stream("POST", url, data=fields, timeout=120,
                      files={"image": ("p.png", _png(_solid((1, 2, 3), (64, 64))), "image/png")}) as response:
        assert response.status_code == 200
        next(response.iter_lines())  # the first event: the request is denoising; then hang up
    # Other pictures push the cancelled request's prefix out of the cache.
    for shade in range(4):
        body = {"model": MODEL, "prompt": f"shade {shade}", "num_inference_steps": "2", "seed": str(shade)}
        image = ("s.png", _png(_solid((shade * 60, 90, 90), (64, 64))), "image/png")
        assert httpx.post(url, data=body, files={"image": image}, timeout=120).status_code == 200

    def settled() -> bool:
        return metric(server, "diptych_queue_depth", engine="image") == 0 and metric(
            server, "diptych_flow_cache_bytes", cache="prefix_live") == metric(
            server, "diptych_flow_cache_bytes", cache="prefix")

    wait_until(settled, 60, "every prefix alive to be the cache's")
    held = metric(server, "diptych_flow_cache_bytes", cache="prefix")
    assert 0 < held <= CACHE_GIB * (1 << 30)
