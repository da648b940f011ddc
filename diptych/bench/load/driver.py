"""Drive a scenario: closed loop (a fixed number of requests in flight) or open loop (Poisson arrivals).

Both stop issuing requests when ``requests`` have been sent or ``duration_s`` has passed,
whichever comes first, and then wait for the requests in flight: every request sent is
counted, as a result or as an error. Closed loop measures capacity at a concurrency; open
loop measures what a server does with traffic that does not wait for it, as a public
endpoint sees it (requests keep arriving even when the server falls behind).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Literal

import httpx

from diptych.bench.load.client import RequestResult, send
from diptych.bench.load.scenarios import Scenario

_Send = Callable[[int], Awaitable[RequestResult]]  # request index → its result


@dataclass(frozen=True)
class LoadPlan:
    """One point of a sweep: a concurrency (closed loop) or an arrival rate (open loop), and its bounds."""

    mode: Literal["closed", "open"]
    level: float  # requests in flight (closed) or requests per second (open)
    requests: int | None = None
    duration_s: float | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.requests is None and self.duration_s is None:
            raise ValueError("a load needs a bound: requests, duration_s or both")
        if self.level <= 0 or (self.mode == "closed" and self.level != int(self.level)):
            raise ValueError(f"{self.mode} loop: level {self.level} must be a positive "
                             f"{'integer' if self.mode == 'closed' else 'number'}")
        if (self.requests is not None and self.requests < 1) or (self.duration_s is not None and self.duration_s <= 0):
            raise ValueError(f"bounds must be positive: requests {self.requests}, duration {self.duration_s}")

    @property
    def label(self) -> str:
        return f"c={int(self.level)}" if self.mode == "closed" else f"rate={self.level:g}/s"


@dataclass(frozen=True)
class LoadRun:
    plan: LoadPlan
    results: tuple[RequestResult, ...]
    wall_s: float  # first request sent → last answer read


def arrival_offsets(rate: float, seed: int) -> Iterator[float]:
    """Send times (seconds from the start) of a Poisson process of ``rate`` per second: exponential gaps."""
    rng = random.Random(seed)
    t = 0.0
    while True:
        t += rng.expovariate(rate)
        yield t


async def run_load(
    client: httpx.AsyncClient, scenario: Scenario, plan: LoadPlan,
    on_done: Callable[[RequestResult], None] = lambda result: None, first_index: int = 0,
) -> LoadRun:
    """Send requests ``first_index``, ``first_index + 1``, ... of ``scenario`` as ``plan`` says."""
    start = time.perf_counter()
    stop_at = start + plan.duration_s if plan.duration_s is not None else float("inf")
    limit = plan.requests if plan.requests is not None else float("inf")

    async def one(index: int) -> RequestResult:
        result = await send(client, scenario.request(first_index + index), start)
        on_done(result)
        return result

    if plan.mode == "closed":
        results = await _closed(one, int(plan.level), limit, stop_at)
    else:
        results = await _open(one, arrival_offsets(plan.level, plan.seed), start, limit, stop_at)
    return LoadRun(plan, tuple(sorted(results, key=lambda r: r.start_s)), time.perf_counter() - start)


async def _closed(one: _Send, concurrency: int, limit: float, stop_at: float) -> list[RequestResult]:
    results: list[RequestResult] = []
    issued = 0

    async def worker() -> None:
        nonlocal issued
        # asyncio is single-threaded: reading and bumping `issued` between awaits is atomic.
        while issued < limit and time.perf_counter() < stop_at:
            index, issued = issued, issued + 1
            results.append(await one(index))

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return results


async def _open(one: _Send, offsets: Iterator[float], start: float, limit: float,
                stop_at: float) -> list[RequestResult]:
    tasks: list[asyncio.Task[RequestResult]] = []
    for index, offset in enumerate(offsets):
        send_at = start + offset
        if index >= limit or send_at >= stop_at:
            break
        delay = send_at - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(index)))
    return list(await asyncio.gather(*tasks))
