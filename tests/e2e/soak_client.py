"""The soak test's load: a seeded mix of requests from many concurrent clients, some of which hang up.

Every request ends in exactly one recorded outcome: its status (for a stream, how the stream
ended as well), ``disconnected`` when this client hung up on purpose, or a failure kind
(``transport-error``, ``truncated-stream``, ``hung``) that the test rejects.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import ClassVar

import httpx
from PIL import Image

MODEL = "tiny-qwen-image-edit"
VALID = frozenset({200, 429, 503, 504})  # the documented statuses of a well-formed request
# What each malformed kind must get; every other kind is well formed.
REFUSED = {"bad_model": 404, "bad_size": 400, "bad_json": 400, "bad_steps": 400, "too_large": 413, "bad_route": 404}


def allowed_results(kind: str) -> frozenset[str]:
    """The outcomes a request of ``kind`` may have, besides ``disconnected``."""
    if kind in REFUSED:
        return frozenset({str(REFUSED[kind])})
    results = {str(status) for status in VALID}
    if kind.endswith("_stream"):
        # Once a stream's headers are out, a failure is its last event (503 and 504 envelopes).
        results |= {"200+done", "200+error:service_unavailable_error", "200+error:timeout_error"}
        results.discard("200")
    return frozenset(results)


@dataclass(frozen=True)
class Call:
    kind: str
    path: str
    json: dict | None = None
    content: bytes | None = None
    data: dict | None = None
    files: dict | None = None
    stream: bool = False


@dataclass
class Outcome:
    kind: str
    result: str  # "200", "429", "200+error:service_unavailable_error", "disconnected", "transport-error", ...
    status: int | None
    seconds: float
    detail: str = ""
    retry_after_s: float = 0.0  # a 429's Retry-After


@dataclass
class SoakReport:
    outcomes: list[Outcome] = field(default_factory=list)
    seconds: float = 0.0

    def by_result(self) -> Counter[str]:
        return Counter(o.result for o in self.outcomes)

    def by_kind(self) -> dict[str, Counter[str]]:
        table: dict[str, Counter[str]] = {}
        for o in self.outcomes:
            table.setdefault(o.kind, Counter())[o.result] += 1
        return table


def _png(colour: tuple[int, int, int], size: int = 64) -> bytes:
    buffer = io.BytesIO()
    image = Image.new("RGB", (size, size), colour)
    image.paste((255 - colour[0], colour[1], 255 - colour[2]), (8, 8, size // 2, size // 2))
    image.save(buffer, "PNG")
    return buffer.getvalue()


class Mix:
    """Seeded request builders; edits reuse two sources and prompts so their encodings stay cached."""

    WEIGHTS: ClassVar[dict[str, int]] = {
        "chat": 22, "chat_stream": 14, "chat_image": 6, "generate": 16, "generate_stream": 8, "edit": 6,
        "bad_model": 6, "bad_size": 6, "bad_json": 5, "bad_steps": 5, "too_large": 2, "bad_route": 4,
    }

    def __init__(self, seed: int, max_body_bytes: int) -> None:
        self.rng = random.Random(seed)
        self.max_body_bytes = max_body_bytes
        self.sources = (_png((200, 30, 30)), _png((30, 30, 200)))
        self.image_url = "data:image/png;base64," + base64.b64encode(_png((30, 200, 30), 32)).decode()

    def kinds(self, n: int) -> list[str]:
        names, weights = zip(*self.WEIGHTS.items())
        return self.rng.choices(names, weights, k=n)

    def warm_up(self) -> list[str]:
        """One of each kind, and each edit source/prompt pair (their first encode is the slow one)."""
        return [*self.WEIGHTS, "edit", "edit", "edit"]

    def build(self, kind: str) -> Call:
        rng = self.rng
        words = " ".join(rng.choice(("red", "blue", "square", "circle", "sky", "sea", "a", "the")) for _ in range(6))
        chat = {"model": MODEL, "max_tokens": rng.randint(4, 48), "temperature": rng.choice((0.0, 0.8)),
                "seed": rng.randint(0, 9999), "messages": [{"role": "user", "content": words}]}
        image = {"model": MODEL, "prompt": words, "size": "64x64", "num_inference_steps": rng.randint(2, 6),
                 "seed": rng.randint(0, 9999), "guidance_scale": rng.choice((1.0, 4.0))}
        if kind == "chat":
            return Call(kind, "/v1/chat/completions", json=chat)
        if kind == "chat_stream":
            return Call(kind, "/v1/chat/completions", json={**chat, "stream": True}, stream=True)
        if kind == "chat_image":
            content = [{"type": "text", "text": "what is this?"},
                       {"type": "image_url", "image_url": {"url": self.image_url}}]
            body = {**chat, "messages": [{"role": "user", "content": content}]}
            return Call(kind, "/v1/chat/completions", json=body)
        if kind == "generate":
            return Call(kind, "/v1/images/generations", json={**image, "n": rng.choice((1, 1, 2))})
        if kind == "generate_stream":
            body = {**image, "stream": True, "partial_images": rng.choice((0, 1, 2))}
            return Call(kind, "/v1/images/generations", json=body, stream=True)
        if kind == "edit":
            data = {"model": MODEL, "prompt": rng.choice(("make it green", "add a circle")), "size": "64x64",
                    "num_inference_steps": str(rng.randint(2, 4)), "seed": str(rng.randint(0, 9999))}
            source = rng.choice(self.sources)
            return Call(kind, "/v1/images/edits", data=data, files={"image": ("source.png", source, "image/png")})
        if kind == "bad_model":
            path, body = rng.choice((("/v1/chat/completions", chat), ("/v1/images/generations", image)))
            return Call(kind, path, json={**body, "model": "no-such-model"})
        if kind == "bad_size":
            return Call(kind, "/v1/images/generations", json={**image, "size": "63x65"})
        if kind == "bad_json":
            return Call(kind, "/v1/chat/completions", content=b'{"model": "tiny-qwen-image-edit", "messages": [')
        if kind == "bad_steps":
            return Call(kind, "/v1/images/generations", json={**image, "num_inference_steps": 10**6})
        if kind == "too_large":
            padding = "x" * (self.max_body_bytes + 1024)
            return Call(kind, "/v1/chat/completions", json={**chat, "user": padding})
        if kind == "bad_route":
            return Call(kind, "/v1/no/such/route", json=chat)
        raise ValueError(f"unknown kind {kind!r}")


async def _send(client: httpx.AsyncClient, call: Call) -> Outcome:
    started = time.monotonic()
    headers = {"content-type": "application/json"} if call.content is not None else None
    request = client.build_request("POST", call.path, json=call.json, content=call.content, data=call.data,
                                   files=call.files, headers=headers)
    response = await client.send(request, stream=call.stream)
    try:
        if not call.stream or response.status_code != 200:
            await response.aread()
            return Outcome(call.kind, str(response.status_code), response.status_code, time.monotonic() - started,
                           _check_body(response), float(response.headers.get("retry-after", 0)))
        ending = await _read_stream(response)
        return Outcome(call.kind, f"200+{ending}", 200, time.monotonic() - started)
    finally:
        await response.aclose()


def _check_body(response: httpx.Response) -> str:
    """Empty when the body is what its status promises; otherwise what is wrong with it."""
    try:
        body = response.json()
    except ValueError:
        return f"not JSON: {response.text[:200]!r}"
    if response.status_code == 200:
        return "" if ("choices" in body or "data" in body) else f"200 without a result: {str(body)[:200]}"
    problems = "" if isinstance(body.get("error"), dict) and "message" in body["error"] else "no error envelope"
    if response.status_code == 429 and "retry-after" not in response.headers:
        problems += " 429 without Retry-After"
    return problems


async def _read_stream(response: httpx.Response) -> str:
    """How an SSE stream ended: ``done``, ``error:<type>``, or ``truncated-stream``."""
    event = "message"
    async for line in response.aiter_lines():
        if line.startswith("event: "):
            event = line[len("event: "):]
        elif line == "data: [DONE]":
            return "done"
        elif line.startswith("data: "):
            payload = json.loads(line[len("data: "):])
            if event == "error" or "error" in payload:
                return f"error:{payload['error']['type']}"
            if payload.get("type", "").endswith(".completed"):
                # Image streams end with their completed event (chat streams with [DONE]).
                return "done"
            event = "message"
    return "truncated-stream"


async def run_soak(base_url: str, kinds: list[str], mix: Mix, *, concurrency: int, disconnect_rate: float,
                   client_timeout_s: float) -> SoakReport:
    """Send one request per entry of ``kinds`` from ``concurrency`` clients; record each one's outcome.

    A client refused with 429 waits for (part of) its Retry-After before its next request.
    """
    report = SoakReport()
    todo: asyncio.Queue[str] = asyncio.Queue()
    for kind in kinds:
        todo.put_nowait(kind)
    limits = httpx.Limits(max_connections=concurrency * 2, max_keepalive_connections=concurrency)

    async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=client_timeout_s) as client:

        async def one_client() -> None:
            while not todo.empty():
                kind = todo.get_nowait()
                call = mix.build(kind)
                hang_up_after = mix.rng.uniform(0.01, 0.8) if mix.rng.random() < disconnect_rate else None
                started = time.monotonic()
                try:
                    outcome = await asyncio.wait_for(_send(client, call), hang_up_after)
                except TimeoutError:
                    if hang_up_after is None:
                        outcome = Outcome(kind, "hung", None, time.monotonic() - started)
                    else:
                        outcome = Outcome(kind, "disconnected", None, time.monotonic() - started)
                except httpx.TimeoutException as exc:
                    outcome = Outcome(kind, "hung", None, time.monotonic() - started, repr(exc))
                except httpx.HTTPError as exc:
                    outcome = Outcome(kind, "transport-error", None, time.monotonic() - started, repr(exc))
                report.outcomes.append(outcome)
                if outcome.status == 429:
                    # As a well-behaved client does: the load stays near twice capacity, not a 429 storm.
                    await asyncio.sleep(min(outcome.retry_after_s, 2.0) * mix.rng.uniform(0.5, 1.0))

        started = time.monotonic()
        await asyncio.gather(*(one_client() for _ in range(concurrency)))
        report.seconds = time.monotonic() - started
    return report
