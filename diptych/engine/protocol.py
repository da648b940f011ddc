"""The one small interface the gateway uses to talk to engines (vLLM's ``EngineClient`` idea)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Literal, Protocol

from diptych.models.base import ModelCard
from diptych.types import CacheStats, ChatEvent, ChatRequest, ImageEvent, ImageRequest

# restarting: a component died and is being replaced on its own; its requests got 503.
HealthState = Literal["starting", "ok", "degraded", "restarting", "down", "stopping"]


@dataclass(frozen=True)
class Health:
    state: HealthState
    components: dict[str, HealthState]
    detail: str = ""


@dataclass(frozen=True)
class FlowWorkerStats:
    """One flow-decoder worker of the pool (engine/flow_client.py)."""

    index: int
    device: str
    state: HealthState
    active_images: int
    steps_total: int
    restarts: int


@dataclass(frozen=True)
class EngineStats:
    in_flight: dict[str, int]
    active_batch: dict[str, int]
    generated_tokens_total: int
    denoising_steps_total: int
    flow_caches: dict[str, CacheStats] = field(default_factory=dict)
    flow_workers: tuple[FlowWorkerStats, ...] = ()


class EngineClient(Protocol):
    """Submit, stream events, abort (by closing the stream), health.

    Closing an event stream early (the client went away) aborts the request: it stops
    consuming compute at the engine's next step.
    """

    @property
    def card(self) -> ModelCard: ...

    def chat(self, request: ChatRequest) -> AsyncIterator[ChatEvent]: ...

    def images(self, request: ImageRequest) -> AsyncIterator[ImageEvent]: ...

    def health(self) -> Health: ...

    def stats(self) -> EngineStats: ...

    async def start(self) -> None: ...

    async def shutdown(self) -> None: ...
