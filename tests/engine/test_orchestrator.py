"""Orchestrator checks, admission and deadlines, with stand-in engines (no model compute)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from PIL import Image

from diptych.engine.errors import CapabilityError, DeadlineExceededError, InvalidRequestError, QueueFullError
from diptych.engine.orchestrator import EAGER_BELOW_BYTES, Orchestrator, runs_eagerly
from diptych.models.base import Capabilities
from diptych.types import (
    ChatMessage,
    ChatRequest,
    EngineConfig,
    ImageProgress,
    ImageRequest,
    ImagesFinished,
    Limits,
    TextPart,
)


class StubAdapter:
    family = "stub"

    def __init__(self, edit: bool) -> None:
        self.edit = edit

    def count_prompt_tokens(self, text: str) -> int:
        return len(text.split())

    def checkpoint_dtype(self) -> str | None:
        return "bfloat16"

    def capabilities(self) -> Capabilities:
        return Capabilities(understand=False, generate=True, edit=self.edit, min_side=32, max_side=512,
                            size_multiple=16)


class StubFlow:
    """Takes ``step_s`` per step for ``steps`` steps; records which requests were closed early."""

    health_state = "ok"
    active_images = 0
    steps_total = 0
    caches: dict = {}  # noqa: RUF012 - read only
    workers: list = []  # noqa: RUF012 - read only

    def worker_stats(self) -> tuple:
        return ()

    def __init__(self, step_s: float = 0.0) -> None:
        self.step_s = step_s
        self.aborted: list[str] = []

    async def run(self, request: ImageRequest) -> AsyncIterator:
        done = False
        try:
            for step in range(request.num_inference_steps):
                await asyncio.sleep(self.step_s)
                yield ImageProgress(step + 1, request.num_inference_steps)
            done = True
            yield ImagesFinished((Image.new("RGB", (request.width, request.height)),))
        finally:
            if not done:
                self.aborted.append(request.request_id)


def config(**limits: object) -> EngineConfig:
    values = dict(max_image_side=256, max_n=2, max_steps=10, max_prompt_tokens=64, max_output_tokens=32,
                  max_images_per_request=1, queue_depth=2, request_timeout_s=5.0)
    values.update(limits)
    return EngineConfig(model_dir=Path("."), served_name="stub", device="cpu", dtype="auto", cache_dir=Path("."),
                        kv_cache_gib=1, max_model_len=512, max_num_seqs=4, ar_startup_timeout_s=1,
                        limits=Limits(**values))  # type: ignore[arg-type]


def orchestrator(flow: StubFlow, edit: bool = False, **limits: object) -> Orchestrator:
    return Orchestrator(config(**limits), StubAdapter(edit), ar=None, flow=flow)  # type: ignore[arg-type]


def image_request(**overrides: object) -> ImageRequest:
    values: dict = dict(request_id="r", prompt="p", width=64, height=64, num_inference_steps=3)
    values.update(overrides)
    return ImageRequest(**values)


async def drain(stream: AsyncIterator) -> list:
    return [event async for event in stream]


async def test_generate_runs_to_completion() -> None:
    events = await drain(orchestrator(StubFlow()).images(image_request()))
    assert isinstance(events[-1], ImagesFinished) and len(events) == 4


@pytest.mark.parametrize(
    ("overrides", "param"),
    [
        ({"width": 48 + 8}, "size"),
        ({"width": 16}, "size"),
        ({"height": 512}, "size"),  # above the server's max_image_side (256) though the model allows 512
        ({"n": 3}, "n"),
        ({"num_inference_steps": 11}, "num_inference_steps"),
        ({"prompt": "word " * 65}, "prompt"),
        ({"negative_prompt": "word " * 65}, "negative_prompt"),
    ],
)
async def test_out_of_range_requests_are_refused_before_compute(overrides: dict, param: str) -> None:
    flow = StubFlow()
    with pytest.raises(InvalidRequestError) as info:
        await drain(orchestrator(flow).images(image_request(**overrides)))
    assert info.value.param == param


async def test_missing_capabilities_are_named() -> None:
    engine = orchestrator(StubFlow(), edit=False)
    with pytest.raises(CapabilityError, match="'edit'"):
        await drain(engine.images(image_request(source_images=(Image.new("RGB", (8, 8)),))))
    with pytest.raises(CapabilityError, match="understand"):
        await drain(engine.chat(ChatRequest("c", (ChatMessage("user", (TextPart("hi"),)),))))


async def test_deadline_aborts_the_engine_request() -> None:
    flow = StubFlow(step_s=0.2)
    engine = orchestrator(flow, request_timeout_s=0.3)
    with pytest.raises(DeadlineExceededError):
        await drain(engine.images(image_request(num_inference_steps=10)))
    assert flow.aborted == ["r"]
    assert engine.stats().in_flight["image"] == 0


async def test_closing_the_stream_aborts_the_engine_request() -> None:
    flow = StubFlow(step_s=0.01)
    engine = orchestrator(flow)
    stream = engine.images(image_request(num_inference_steps=10))
    await anext(stream)
    await stream.aclose()  # what the gateway does when the client goes away
    assert flow.aborted == ["r"]
    assert engine.stats().in_flight["image"] == 0


async def test_queue_full_past_the_depth() -> None:
    flow = StubFlow(step_s=0.05)
    engine = orchestrator(flow, queue_depth=2)
    running = [engine.images(image_request(request_id=f"r{i}", num_inference_steps=5)) for i in range(2)]
    for stream in running:
        await anext(stream)
    with pytest.raises(QueueFullError) as info:
        await drain(engine.images(image_request(request_id="r3")))
    assert info.value.retry_after_s >= 1
    for stream in running:
        await stream.aclose()
    await drain(engine.images(image_request(request_id="r4")))  # capacity is back


@pytest.mark.parametrize(
    ("ar_state", "flow_state", "expected"),
    [
        ("ok", "ok", "ok"),
        ("ok", "restarting", "restarting"),
        ("restarting", "ok", "restarting"),
        ("restarting", "down", "down"),  # one that will not come back by itself outweighs it
        ("ok", "down", "degraded"),
        ("starting", "ok", "starting"),
    ],
)
def test_health_reports_a_component_being_replaced(ar_state: str, flow_state: str, expected: str) -> None:
    class StubAR:
        health_state = ar_state

    flow = StubFlow()
    flow.health_state = flow_state
    engine = Orchestrator(config(), StubAdapter(False), ar=StubAR(), flow=flow)  # type: ignore[arg-type]
    health = engine.health()
    assert health.state == expected and health.components == {"ar": ar_state, "flow": flow_state}


@pytest.mark.parametrize(("setting", "device", "weights", "eager"), [
    ("auto", "cpu", EAGER_BELOW_BYTES - 1, True),
    ("auto", "cpu", EAGER_BELOW_BYTES, False),
    ("auto", "cuda", 1, False),
    ("eager", "cuda", EAGER_BELOW_BYTES * 8, True),
    ("compiled", "cpu", 1, False),
])
def test_ar_compile_setting_chooses_eager_by_device_and_weights(
    tmp_path: Path, setting: str, device: str, weights: int, eager: bool
) -> None:
    # Sparse files: their size is what counts, none of it is written.
    with (tmp_path / "model-00001.safetensors").open("wb") as shard:
        shard.truncate(weights // 2)
    (tmp_path / "vision").mkdir()
    with (tmp_path / "vision" / "model.safetensors").open("wb") as shard:
        shard.truncate(weights - weights // 2)
    (tmp_path / "tokenizer.json").write_bytes(b"x" * 100)  # not weights
    values = {**config().__dict__, "device": device, "ar_compile": setting}
    assert runs_eagerly(EngineConfig(**values), tmp_path) is eager
