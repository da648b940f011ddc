"""One request's timing and counting, against httpx mock transports that answer like the server would."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable

import httpx
import pytest

from diptych.bench.load.client import RequestResult, send, sse_events
from diptych.bench.load.inputs import builtin_images
from diptych.bench.load.scenarios import RequestOptions, Scenario


def _sse(*events: tuple[str | None, str]) -> bytes:
    return "".join((f"event: {name}\n" if name else "") + f"data: {data}\n\n" for name, data in events).encode()


def _chunk(content: str | None = None, usage: dict | None = None) -> str:
    delta = {"content": content} if content is not None else {}
    body: dict = {"object": "chat.completion.chunk", "choices": [] if usage else [{"index": 0, "delta": delta}]}
    if usage:
        body["usage"] = usage
    return json.dumps(body)


async def _send(kind_index: int, handler: Callable[[httpx.Request], httpx.Response], stream: bool = True,
                ) -> RequestResult:
    scenario = Scenario("mixed", RequestOptions(model="m", stream=stream), builtin_images(3))
    async with httpx.AsyncClient(transport=httpx.MockTransport(handler), base_url="http://test") as client:
        return await send(client, scenario.request(kind_index), 0.0)


async def test_sse_events_joins_data_lines_and_names_events() -> None:
    async def lines() -> AsyncIterator[str]:
        for line in [": comment", "event: x", "data: a", "data: b", "", "data: c", ""]:
            yield line

    assert [e async for e in sse_events(lines())] == [("x", "a\nb"), ("message", "c")]


async def test_streamed_chat_counts_tokens_from_usage_and_times_gaps_between_chunks() -> None:
    body = _sse((None, _chunk("")), (None, _chunk("a")), (None, _chunk("b")), (None, _chunk("c")),
                (None, _chunk(usage={"prompt_tokens": 5, "completion_tokens": 4, "total_tokens": 9})), (None, "[DONE]"))
    seen: list[dict] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(json.loads(request.content))
        return httpx.Response(200, content=body, headers={"content-type": "text/event-stream"})

    result = await _send(0, handler)
    assert result.ok and result.kind == "chat" and seen[0]["stream"] is True
    assert result.output_tokens == 4  # the server's count, not the three text chunks
    assert len(result.itl_s) == 2  # three text chunks: two gaps; the empty role chunk is no output
    assert result.ttft_s is not None and 0 <= result.ttft_s <= result.latency_s


async def test_streamed_images_count_partial_and_completed_events() -> None:
    body = _sse(("image_generation.partial_image", json.dumps({"type": "image_generation.partial_image"})),
                ("image_generation.partial_image", json.dumps({"type": "image_generation.partial_image"})),
                ("image_generation.completed", json.dumps({"type": "image_generation.completed"})))
    result = await _send(1, lambda request: httpx.Response(200, content=body))
    assert result.ok and (result.kind, result.partial_images, result.images) == ("generate", 2, 1)


async def test_edit_is_multipart_with_the_picture() -> None:
    body = _sse(("image_edit.completed", json.dumps({"type": "image_edit.completed"})))
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, content=body)

    result = await _send(2, handler)
    assert result.ok and result.images == 1
    assert seen[0].url.path == "/v1/images/edits"
    assert seen[0].headers["content-type"].startswith("multipart/form-data")
    assert b'name="stream"\r\n\r\ntrue' in seen[0].content and b"\x89PNG" in seen[0].content


async def test_whole_answers_count_usage_and_data() -> None:
    chat = await _send(0, lambda r: httpx.Response(200, json={"usage": {"completion_tokens": 7}}), stream=False)
    images = await _send(1, lambda r: httpx.Response(200, json={"data": [{"b64_json": ""}] * 2}), stream=False)
    assert (chat.ok, chat.output_tokens, chat.ttft_s is not None) == (True, 7, True)
    assert (images.ok, images.images) == (True, 2)


@pytest.mark.parametrize(
    ("handler", "error", "status"),
    [
        (lambda r: httpx.Response(429, json={"error": {"message": "queue full"}}), "429", 429),
        (lambda r: httpx.Response(500, text="boom"), "500", 500),
        (lambda r: httpx.Response(200, content=_sse(("error", '{"error": {"message": "x"}}'))), "stream_error", 200),
        (lambda r: httpx.Response(200, content=_sse((None, _chunk("a")))), "incomplete_stream", 200),
        (lambda r: httpx.Response(200, content=b"not json"), "bad_response", 200),
    ],
)
async def test_failures_are_recorded_not_raised(handler: Callable, error: str, status: int) -> None:
    result = await _send(0, handler, stream=error not in {"bad_response"})
    assert (result.ok, result.error, result.status) == (False, error, status)


async def test_transport_errors_are_recorded_by_exception_name() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    result = await _send(1, refuse)
    assert (result.ok, result.error, result.status) == (False, "ConnectError", None)
