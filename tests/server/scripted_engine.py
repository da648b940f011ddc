"""The real Orchestrator over scripted stages: the gateway and every engine-side check, without model compute.

FakeEngine (fake_engine.py) scripts the whole engine; here only the compute is scripted, so
limits the orchestrator enforces (prompt tokens, n, steps, sizes, capability, masks) are the
real ones, and the stages record whether anything reached them.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from diptych.engine.ar_stats import SchedulerLoad
from diptych.engine.orchestrator import Orchestrator
from diptych.models.base import Capabilities, ChatPrompt
from diptych.settings import Settings
from diptych.types import (
    CacheStats,
    ChatEvent,
    ChatFinished,
    ChatMessage,
    ImageEvent,
    ImagePart,
    ImageProgress,
    ImageRequest,
    ImagesFinished,
    PartialImage,
    SamplingOptions,
    TextDelta,
    TextPart,
)

PATCH = 28  # pixels per image token side, as in Qwen2.5-VL


class ScriptedAdapter:
    """Counts a word as a token and an image as one token per 28×28 patch."""

    family = "scripted"

    def __init__(self, capabilities: Capabilities) -> None:
        self._capabilities = capabilities

    def capabilities(self) -> Capabilities:
        return self._capabilities

    def checkpoint_dtype(self) -> str | None:
        return None

    def render_chat(self, messages: tuple[ChatMessage, ...]) -> ChatPrompt:
        text = " ".join(p.text for m in messages for p in m.content if isinstance(p, TextPart))
        images = tuple(p.image for m in messages for p in m.content if isinstance(p, ImagePart))
        return ChatPrompt(text, images)

    def count_prompt_tokens(self, prompt: ChatPrompt | str) -> int:
        if isinstance(prompt, str):
            return len(prompt.split())
        patches = sum(math.ceil(i.width / PATCH) * math.ceil(i.height / PATCH) for i in prompt.images)
        return len(prompt.text.split()) + patches


@dataclass
class ScriptedAR:
    health_state: str = "ok"
    scheduler_load: SchedulerLoad = field(default_factory=SchedulerLoad)
    prompts: list[ChatPrompt] = field(default_factory=list)

    async def start(self) -> None: ...

    async def shutdown(self) -> None: ...

    async def generate(self, prompt: ChatPrompt, sampling: SamplingOptions, request_id: str) -> AsyncIterator[ChatEvent]:
        self.prompts.append(prompt)
        yield TextDelta("ok", 1)
        yield ChatFinished(("stop",), prompt_tokens=len(prompt.text.split()), completion_tokens=1)


@dataclass
class ScriptedFlow:
    health_state: str = "ok"
    active_images: int = 0
    steps_total: int = 0
    caches: dict[str, CacheStats] = field(default_factory=dict)
    requests: list[ImageRequest] = field(default_factory=list)
    workers: list = field(default_factory=list)

    def worker_stats(self) -> tuple:
        return ()

    async def start(self) -> None: ...

    async def shutdown(self) -> None: ...

    async def run(self, request: ImageRequest) -> AsyncIterator[ImageEvent]:
        self.requests.append(request)
        yield ImageProgress(1, 1)
        if request.partial_images:
            yield PartialImage(0, 0, Image.new("RGB", (request.width, request.height)), 1, 1)
        images = tuple(Image.new("RGB", (request.width, request.height), (200, 30, 30)) for _ in range(request.n))
        yield ImagesFinished(images, prompt_tokens=len(request.prompt.split()))


@dataclass
class Scripted:
    orchestrator: Orchestrator
    ar: ScriptedAR
    flow: ScriptedFlow

    def reached_compute(self) -> bool:
        return bool(self.ar.prompts or self.flow.requests)


CAPABILITIES = Capabilities(understand=True, generate=True, edit=True, default_size=(32, 32), max_source_images=4,
                            supports_mask=True, default_steps=2)


def scripted_engine(settings: Settings, capabilities: Capabilities = CAPABILITIES) -> Scripted:
    ar, flow = ScriptedAR(), ScriptedFlow()
    config = settings.engine_config(Path("."), "tiny")
    orchestrator = Orchestrator(config, ScriptedAdapter(capabilities), ar=ar, flow=flow)  # type: ignore[arg-type]
    return Scripted(orchestrator, ar, flow)
