"""A scripted EngineClient for gateway tests: the gateway's behaviour without model compute."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from PIL import Image

from diptych.engine.admission import AdmissionGate
from diptych.engine.errors import CapabilityError, DeadlineExceededError
from diptych.engine.protocol import EngineStats, Health
from diptych.models.base import Capabilities, ModelCard
from diptych.types import (
    CacheStats,
    ChatEvent,
    ChatFinished,
    ChatRequest,
    ImageEvent,
    ImageProgress,
    ImageRequest,
    ImagesFinished,
    PartialImage,
    TextDelta,
)


@dataclass
class FakeEngine:
    edit: bool = True
    reply: tuple[str, ...] = ("The ", "circle ", "is red.")
    delay_s: float = 0.0
    deadline_s: float = 60.0
    queue_depth: int = 8
    chat_requests: list[ChatRequest] = field(default_factory=list)
    image_requests: list[ImageRequest] = field(default_factory=list)
    closed: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.gate = AdmissionGate("image", self.queue_depth)
        self._card = ModelCard(
            name="tiny",
            family="fake",
            architecture="FakeAdapter",
            capabilities=Capabilities(understand=True, generate=True, edit=self.edit, default_size=(32, 32)),
            max_model_len=1024,
        )

    @property
    def card(self) -> ModelCard:
        return self._card

    async def start(self) -> None: ...

    async def shutdown(self) -> None: ...

    def health(self) -> Health:
        return Health("ok", {"fake": "ok"})

    def stats(self) -> EngineStats:
        return EngineStats({"chat": 0, "image": self.gate.in_flight}, {"ar": 0, "flow": 0}, 7, 11,
                           {"prefix": CacheStats(hits=3, misses=2, bytes=4096, entries=1)})

    async def chat(self, request: ChatRequest) -> AsyncIterator[ChatEvent]:
        self.chat_requests.append(request)
        try:
            n = request.sampling.n
            for piece in self.reply:
                await asyncio.sleep(self.delay_s)
                for index in range(n):
                    yield TextDelta(piece, 1, index=index)
            yield ChatFinished(("stop",) * n, prompt_tokens=5, completion_tokens=n * len(self.reply))
        finally:
            self.closed.append(request.request_id)

    async def images(self, request: ImageRequest) -> AsyncIterator[ImageEvent]:
        if request.is_edit and not self.edit:
            raise CapabilityError("model tiny does not support the 'edit' capability", param="model")
        self.image_requests.append(request)
        with self.gate.admit():
            try:
                if self.delay_s > self.deadline_s:
                    raise DeadlineExceededError("the request exceeded its deadline and was cancelled")
                colour = (200, 30, 30)
                for step in range(1, 3):
                    await asyncio.sleep(self.delay_s)
                    yield ImageProgress(step, 2)
                    if request.partial_images:
                        yield PartialImage(0, step - 1, Image.new("RGB", (request.width, request.height)), step, 2)
                images = tuple(Image.new("RGB", (request.width, request.height), colour) for _ in range(request.n))
                yield ImagesFinished(images, prompt_tokens=3)
            finally:
                self.closed.append(request.request_id)
