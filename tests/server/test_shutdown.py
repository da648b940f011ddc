"""Graceful shutdown, in process: a draining app refuses new requests with 503, lets those in flight
finish, and answers the ones still running at the drain timeout with a 503 of their own (a
streamed one with an error event), aborting their engine work. test_shutdown_process.py does
the same to a real process with SIGTERM."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import httpx
from PIL import Image

from diptych.server.app import create_app
from diptych.server.shutdown import Drain
from diptych.settings import Settings
from diptych.types import ImageEvent, ImageProgress, ImageRequest, PartialImage
from tests.server.fake_engine import FakeEngine


def client_for(engine: FakeEngine, drain: Drain) -> httpx.AsyncClient:
    app = create_app(engine, Settings(), manage_engine=False, drain=drain)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


async def until(condition, timeout_s: float = 5.0) -> None:  # noqa: ANN001
    async with asyncio.timeout(timeout_s):
        while not condition():
            await asyncio.sleep(0.01)


async def test_while_draining_new_requests_get_503_and_health_says_stopping() -> None:
    engine, drain = FakeEngine(), Drain()
    async with client_for(engine, drain) as client:
        drain.begin()
        response = await client.post("/v1/images/generations", json={"prompt": "x"})
        assert response.status_code == 503
        assert response.json()["error"] == {"message": "the server is shutting down; retry on another instance",
                                             "type": "service_unavailable_error", "param": None,
                                             "code": "shutting_down"}
        assert response.headers["connection"] == "close" and response.headers["retry-after"] == "5"
        health = await client.get("/health")
        assert health.status_code == 503 and health.json()["status"] == "stopping"
        assert (await client.get("/metrics")).status_code == 200
    assert engine.image_requests == []


async def test_requests_in_flight_finish_while_draining() -> None:
    engine, drain = FakeEngine(delay_s=0.2), Drain()
    async with client_for(engine, drain) as client:
        plain = asyncio.ensure_future(client.post("/v1/images/generations", json={"prompt": "x"}))
        chat = asyncio.ensure_future(client.post("/v1/chat/completions", json={
            "model": "tiny", "messages": [{"role": "user", "content": "hi"}], "stream": True}))
        await until(lambda: drain.in_flight == 2)
        drain.begin()
        assert not await drain.wait_idle(0.05)  # still running
        refused = await client.post("/v1/images/generations", json={"prompt": "y"})
        assert refused.status_code == 503
        assert await drain.wait_idle(5)
        assert (await plain).status_code == 200 and len((await plain).json()["data"]) == 1
        streamed = await chat
        assert streamed.status_code == 200 and streamed.text.rstrip().endswith("data: [DONE]")
    assert len(engine.image_requests) == 1


async def test_past_the_drain_timeout_a_plain_request_gets_503_and_its_work_is_aborted() -> None:
    engine, drain = FakeEngine(delay_s=30), Drain()
    async with client_for(engine, drain) as client:
        pending = asyncio.ensure_future(client.post("/v1/images/generations", json={"prompt": "x"}))
        await until(lambda: len(engine.image_requests) == 1)
        drain.begin()
        drain.expire()
        response = await asyncio.wait_for(pending, 5)
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "shutting_down"
    assert engine.closed == [engine.image_requests[0].request_id]  # the engine stream was closed: aborted
    assert drain.in_flight == 0


class StallingEngine(FakeEngine):
    """Sends one partial image, then never finishes (until its stream is closed)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.stalled = asyncio.Event()

    async def images(self, request: ImageRequest) -> AsyncIterator[ImageEvent]:
        self.image_requests.append(request)
        try:
            yield ImageProgress(1, 2)
            yield PartialImage(0, 0, Image.new("RGB", (request.width, request.height)), 1, 2)
            self.stalled.set()
            await asyncio.Event().wait()
        finally:
            self.closed.append(request.request_id)


async def test_past_the_drain_timeout_a_stream_ends_with_an_error_event() -> None:
    engine, drain = StallingEngine(), Drain()
    body = {"prompt": "x", "stream": True, "partial_images": 1, "size": "32x32"}
    async with client_for(engine, drain) as client:
        # httpx's ASGI transport hands over the body once the app is done, so the request runs as a task.
        pending = asyncio.ensure_future(client.post("/v1/images/generations", json=body))
        await asyncio.wait_for(engine.stalled.wait(), 5)  # headers sent, a partial image streamed
        drain.begin()
        drain.expire()
        response = await asyncio.wait_for(pending, 5)
    assert response.status_code == 200
    events = [json.loads(line[6:]) for line in response.text.splitlines() if line.startswith("data: ")]
    assert events[0]["type"] == "image_generation.partial_image"
    assert events[-1] == {"error": {"message": "the server shut down before the request finished; retry it",
                                    "type": "service_unavailable_error", "param": None, "code": "shutting_down"}}
    assert len(events) == 2
    assert engine.closed == [engine.image_requests[0].request_id]
    assert drain.in_flight == 0
