"""Bounded admission per engine: past the limit a request is refused at once (429), never queued forever.

A request weighs what it puts in the engine's batch (a chat request with ``n`` choices, ``n``);
the limit bounds the sum. The orchestrator refuses (400) a request that could never fit.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
import time

from diptych.engine.errors import QueueFullError


class AdmissionGate:
    def __init__(self, name: str, limit: int) -> None:
        self.name = name
        self.limit = limit
        self.in_flight = 0
        # Exponentially weighted mean latency, used to suggest when to retry.
        self._mean_latency_s = 1.0

    @contextmanager
    def admit(self, weight: int = 1) -> Iterator[None]:
        if self.in_flight + weight > self.limit:
            raise QueueFullError(
                f"the {self.name} queue is full ({self.in_flight} of {self.limit} sequences in flight, "
                f"this request needs {weight}); retry later",
                retry_after_s=self.retry_after_s(),
            )
        self.in_flight += weight
        started = time.monotonic()
        try:
            yield
        finally:
            self.in_flight -= weight
            self._mean_latency_s = 0.8 * self._mean_latency_s + 0.2 * (time.monotonic() - started)

    def retry_after_s(self) -> int:
        return max(1, math.ceil(self._mean_latency_s))
