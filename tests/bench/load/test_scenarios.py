"""Which requests a scenario sends."""

from __future__ import annotations

import base64

import pytest

from diptych.bench.load.inputs import builtin_images
from diptych.bench.load.scenarios import RequestOptions, Scenario, prompt


def test_mixed_takes_the_three_kinds_in_turn_and_walks_all_pictures() -> None:
    images = builtin_images(4)
    scenario = Scenario("mixed", RequestOptions(model="m"), images)
    specs = [scenario.request(i) for i in range(12)]
    assert [s.kind for s in specs[:4]] == ["chat", "generate", "edit", "chat"]
    chats = [s for s in specs if s.kind == "chat"]
    urls = [s.json["messages"][0]["content"][0]["image_url"]["url"] for s in chats]  # type: ignore[index]
    assert [base64.b64decode(u.split(",", 1)[1]) for u in urls] == [i.data for i in images]
    assert scenario.request(5) == scenario.request(5)  # request i is always the same request


def test_bodies_carry_the_options_and_streaming_fields() -> None:
    options = RequestOptions(model="m", size="32x48", steps=3, guidance_scale=2.5, partial_images=2, max_tokens=9)
    scenario = Scenario("mixed", options, builtin_images(2))
    chat, generate, edit = (scenario.request(i) for i in range(3))
    assert chat.json is not None and chat.json["stream_options"] == {"include_usage": True}
    assert chat.json["max_tokens"] == 9
    assert generate.json is not None and generate.path == "/v1/images/generations"
    assert {k: generate.json[k] for k in ("size", "num_inference_steps", "guidance_scale", "partial_images")} == {
        "size": "32x48", "num_inference_steps": 3, "guidance_scale": 2.5, "partial_images": 2}
    assert edit.form is not None and edit.form["stream"] == "true" and edit.form["partial_images"] == "2"
    assert edit.files[0][0] == "image" and edit.files[0][1][2] == "image/png"


def test_without_streaming_no_stream_fields_are_sent() -> None:
    scenario = Scenario("mixed", RequestOptions(model="m", stream=False), builtin_images(1))
    assert all("stream" not in (scenario.request(i).json or scenario.request(i).form or {}) for i in range(3))


def test_unknown_scenario_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown scenario"):
        Scenario("chat", RequestOptions(model="m"), builtin_images(1))


def test_prompts_do_not_repeat_within_180_requests() -> None:
    scenario = Scenario("generate", RequestOptions(model="m"), builtin_images(1))
    prompts = [scenario.request(i).json["prompt"] for i in range(180)]  # type: ignore[index]
    assert len(set(prompts)) == 180 and prompts[0] == prompt(0) == prompt(180)
