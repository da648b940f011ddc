"""Messages between the gateway process and the flow-decoder worker process (pickled)."""

from __future__ import annotations

from dataclasses import dataclass

from diptych.types import CacheStats, ImageEvent, ImageRequest


@dataclass(frozen=True)
class Submit:
    request: ImageRequest


@dataclass(frozen=True)
class Abort:
    request_id: str


@dataclass(frozen=True)
class Shutdown:
    """Finish the jobs in flight, then exit."""


@dataclass(frozen=True)
class Ready:
    budget_bytes: int  # the activation budget the worker admits requests within


@dataclass(frozen=True)
class Fatal:
    """The worker cannot run at all (the checkpoint failed to load)."""

    message: str


@dataclass(frozen=True)
class JobEvent:
    request_id: str
    event: ImageEvent


@dataclass(frozen=True)
class JobFailed:
    request_id: str
    message: str
    invalid_request: bool = False


@dataclass(frozen=True)
class WorkerStats:
    active_requests: int
    active_images: int
    steps_total: int
    caches: tuple[tuple[str, CacheStats], ...] = ()  # the runner's caches across requests, by name


Inbound = Submit | Abort | Shutdown
Outbound = Ready | Fatal | JobEvent | JobFailed | WorkerStats
