"""The flow decoder as the orchestrator sees it: a pool of worker processes, one per flow device.

Each request goes whole to one worker: the one with the fewest images in flight for the size
of its activation budget, among those serving. Every worker keeps its own crash recovery
(flow_worker_client.py): a dead one fails its own requests with 503 and is restarted while
the others go on serving. The pool serves while any worker does; each worker's state is
reported on its own (``workers``). With one flow device (the default) the pool is that one
worker, as before.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import aclosing

from diptych.engine.flow_worker_client import FlowWorkerClient
from diptych.engine.parallel import flow_placements
from diptych.engine.protocol import FlowWorkerStats, HealthState
from diptych.types import CacheStats, EngineConfig, ImageEvent, ImageRequest


class FlowClient:
    def __init__(self, config: EngineConfig, *, log_level: str = "INFO") -> None:
        self.workers = [FlowWorkerClient(config, device=device, cpus=cpus, index=index, log_level=log_level)
                        for index, (device, cpus) in enumerate(flow_placements(config))]

    @property
    def health_state(self) -> HealthState:
        states = {worker.health_state for worker in self.workers}
        if "ok" in states:
            return "ok"  # serving, perhaps with fewer workers (each one's state: worker_stats)
        for state in ("stopping", "restarting", "starting"):
            if state in states:
                return state  # type: ignore[return-value]
        return "down"

    @property
    def active_images(self) -> int:
        return sum(worker.active_images for worker in self.workers)

    @property
    def steps_total(self) -> int:
        return sum(worker.steps_total for worker in self.workers)

    @property
    def restarts(self) -> int:
        return sum(worker.restarts for worker in self.workers)

    @property
    def caches(self) -> dict[str, CacheStats]:
        """Each cache summed over the workers (every worker keeps its own)."""
        total: dict[str, CacheStats] = {}
        for worker in self.workers:
            for name, stats in worker.caches.items():
                seen = total.get(name, CacheStats(0, 0, 0, 0))
                total[name] = CacheStats(seen.hits + stats.hits, seen.misses + stats.misses,
                                         seen.bytes + stats.bytes, seen.entries + stats.entries)
        return total

    def worker_stats(self) -> tuple[FlowWorkerStats, ...]:
        return tuple(FlowWorkerStats(index=w.index, device=w.device, state=w.health_state,
                                     active_images=w.active_images, steps_total=w.steps_total, restarts=w.restarts)
                     for w in self.workers)

    async def start(self) -> None:
        await asyncio.gather(*(worker.start() for worker in self.workers))

    async def run(self, request: ImageRequest) -> AsyncIterator[ImageEvent]:
        serving = [worker for worker in self.workers if worker.health_state == "ok"]
        if not serving:
            # The one worker's own refusal: its state, and the code clients retry on.
            serving = self.workers[:1]
        worker = min(serving, key=lambda w: (w.images_in_flight / max(w.budget_bytes, 1), w.index))
        async with aclosing(worker.run(request)) as events:
            async for event in events:
                yield event

    async def shutdown(self, timeout_s: float = 10.0) -> None:
        results = await asyncio.gather(*(worker.shutdown(timeout_s) for worker in self.workers),
                                       return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            raise errors[0]

