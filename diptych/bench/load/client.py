"""Send one request with httpx and time it: latency, time to first output, gaps between tokens.

Streamed answers are read as server-sent events as they arrive. Chat (OpenAI
``chat.completion.chunk`` events): the first output is the first chunk with text, and each
later text chunk adds an inter-token gap. Images (``*.partial_image`` / ``*.completed``
events): the first output is the first partial image (or the completed one if none came
first). An answer that is not streamed has its first output at its last byte.

Nothing here raises for a failed request: a status other than 200 is recorded under its
number, a transport failure under the httpx exception's name (``ConnectError``,
``ReadTimeout``, ...), an ``error`` event or a stream that ends unfinished under
``stream_error`` / ``incomplete_stream``.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx

from diptych.bench.load.scenarios import Kind, RequestSpec


@dataclass(frozen=True)
class RequestResult:
    """The outcome of one request; times in seconds, ``start_s`` from the start of its run."""

    kind: Kind
    start_s: float
    latency_s: float
    status: int | None
    error: str | None = None
    ttft_s: float | None = None
    itl_s: tuple[float, ...] = ()
    output_tokens: int = 0
    images: int = 0
    partial_images: int = 0

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass
class _Timing:
    """Mutable while one response is read; frozen into a RequestResult at the end."""

    start: float
    first: float | None = None
    last_token: float | None = None
    gaps: list[float] = field(default_factory=list)
    tokens: int = 0
    token_chunks: int = 0
    images: int = 0
    partials: int = 0
    finished: bool = False
    error: str | None = None

    def output(self, now: float) -> None:
        if self.first is None:
            self.first = now


async def sse_events(lines: AsyncIterator[str]) -> AsyncIterator[tuple[str, str]]:
    """(event name, data) per server-sent event; the name is "message" when the event has none."""
    name, data = "message", []
    async for line in lines:
        if not line:
            if data:
                yield name, "\n".join(data)
            name, data = "message", []
        elif line.startswith("event:"):
            name = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].removeprefix(" "))
        # Comments (":...") and unknown fields are ignored, as the SSE spec says.
    if data:
        yield name, "\n".join(data)


async def send(client: httpx.AsyncClient, spec: RequestSpec, run_start: float) -> RequestResult:
    timing = _Timing(start=time.perf_counter())
    status: int | None = None
    try:
        async with client.stream("POST", spec.path, json=spec.json, data=spec.form,
                                 files=list(spec.files) or None) as response:
            status = response.status_code
            if status != 200:
                await response.aread()
                timing.error = str(status)
            elif spec.stream:
                await _read_stream(spec.kind, response, timing)
            else:
                _read_body(spec.kind, json.loads(await response.aread()), timing)
    except httpx.HTTPError as exc:
        timing.error = type(exc).__name__
    except (json.JSONDecodeError, KeyError, TypeError, ValueError):
        timing.error = "bad_response"  # a 200 whose body is not what the API promises
    end = time.perf_counter()
    if timing.error is None and not timing.finished:
        timing.error = "incomplete_stream"
    return RequestResult(
        kind=spec.kind,
        start_s=timing.start - run_start,
        latency_s=end - timing.start,
        status=status,
        error=timing.error,
        ttft_s=None if timing.first is None else timing.first - timing.start,
        itl_s=tuple(timing.gaps),
        output_tokens=timing.tokens or timing.token_chunks,
        images=timing.images,
        partial_images=timing.partials,
    )


def _read_body(kind: Kind, body: dict[str, Any], timing: _Timing) -> None:
    timing.output(time.perf_counter())
    if kind == "chat":
        timing.tokens = int(body["usage"]["completion_tokens"])
    else:
        timing.images = len(body["data"])
    timing.finished = True


async def _read_stream(kind: Kind, response: httpx.Response, timing: _Timing) -> None:
    async for name, data in sse_events(response.aiter_lines()):
        now = time.perf_counter()
        if data == "[DONE]":
            timing.finished = timing.finished or kind == "chat"
            continue
        payload = json.loads(data)
        if name == "error" or "error" in payload:
            timing.error = "stream_error"
            return
        if kind == "chat":
            _chat_chunk(payload, now, timing)
        else:
            _image_event(payload, now, timing)


def _chat_chunk(payload: dict[str, Any], now: float, timing: _Timing) -> None:
    if payload.get("usage"):
        timing.tokens = int(payload["usage"]["completion_tokens"])
    for choice in payload.get("choices", []):
        if choice.get("delta", {}).get("content"):
            if timing.last_token is not None:
                timing.gaps.append(now - timing.last_token)
            timing.output(now)
            timing.last_token = now
            timing.token_chunks += 1


def _image_event(payload: dict[str, Any], now: float, timing: _Timing) -> None:
    kind = str(payload.get("type", ""))
    if kind.endswith(".partial_image"):
        timing.partials += 1
        timing.output(now)
    elif kind.endswith(".completed"):
        timing.images += 1
        timing.output(now)
        # Each image of a request (n > 1) arrives as its own completed event; the stream's
        # end then says the request is done.
        timing.finished = True
