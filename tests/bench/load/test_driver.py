"""Closed and open loops against a mock server: bounds, concurrency, and the seeded Poisson arrivals."""

from __future__ import annotations

import asyncio
import itertools
import json
import statistics

import httpx
import pytest

from diptych.bench.load.driver import LoadPlan, LoadRun, arrival_offsets, run_load
from diptych.bench.load.inputs import builtin_images
from diptych.bench.load.scenarios import RequestOptions, Scenario

_DONE = json.dumps({"type": "image_generation.completed"})


class _SlowServer:
    """Answers every image request after ``delay`` seconds and records how many were in flight at once."""

    def __init__(self, delay: float) -> None:
        self.delay, self.in_flight, self.peak = delay, 0, 0
        self.arrivals: list[float] = []
        self.seeds: list[int] = []

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        self.arrivals.append(asyncio.get_running_loop().time())
        self.seeds.append(json.loads(request.content)["seed"])
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        await asyncio.sleep(self.delay)
        self.in_flight -= 1
        return httpx.Response(200, content=f"event: image_generation.completed\ndata: {_DONE}\n\n".encode())


async def _run(server: _SlowServer, plan: LoadPlan, first_index: int = 0) -> LoadRun:
    scenario = Scenario("generate", RequestOptions(model="m", seed=100), builtin_images(2))
    async with httpx.AsyncClient(transport=httpx.MockTransport(server), base_url="http://test") as client:
        return await run_load(client, scenario, plan, first_index=first_index)


def test_arrivals_are_seeded_poisson() -> None:
    first = list(itertools.islice(arrival_offsets(4.0, seed=1), 20_000))
    assert first == list(itertools.islice(arrival_offsets(4.0, seed=1), 20_000))
    assert first[:5] != list(itertools.islice(arrival_offsets(4.0, seed=2), 5))
    gaps = [b - a for a, b in zip([0.0, *first], first)]
    assert all(g > 0 for g in gaps)
    # Exponential gaps: mean 1/rate and a standard deviation equal to the mean (a fixed
    # spacing would have a deviation of 0).
    assert statistics.fmean(gaps) == pytest.approx(0.25, rel=0.03)
    assert statistics.stdev(gaps) == pytest.approx(0.25, rel=0.05)


async def test_closed_loop_keeps_concurrency_requests_in_flight_and_sends_exactly_n() -> None:
    server = _SlowServer(0.02)
    run = await _run(server, LoadPlan("closed", 3, requests=10))
    assert len(run.results) == 10 == len(server.arrivals)
    assert server.peak == 3
    assert all(r.ok and r.images == 1 for r in run.results)
    assert sorted(server.seeds) == list(range(100, 110))  # requests 0..9, each sent once


async def test_a_later_point_continues_the_request_numbers() -> None:
    server = _SlowServer(0.0)
    await _run(server, LoadPlan("closed", 2, requests=4), first_index=10)
    assert sorted(server.seeds) == list(range(110, 114))


async def test_duration_stops_issuing_and_waits_for_requests_in_flight() -> None:
    server = _SlowServer(0.05)
    run = await _run(server, LoadPlan("closed", 2, duration_s=0.22))
    # Two workers, 50 ms per request: about 2 × 5 requests issued before 0.22 s, all answered.
    assert 6 <= len(run.results) <= 10 and all(r.ok for r in run.results)
    assert len(run.results) == len(server.arrivals)
    assert run.wall_s >= 0.22


async def test_open_loop_sends_at_the_arrival_times_whatever_the_server_does() -> None:
    server = _SlowServer(0.3)  # slower than the arrivals: requests pile up instead of waiting
    run = await _run(server, LoadPlan("open", 50.0, requests=8, seed=3))
    expected = list(itertools.islice(arrival_offsets(50.0, seed=3), 8))
    assert len(run.results) == 8 and server.peak > 1
    sent = sorted(r.start_s for r in run.results)
    assert all(abs(s - e) < 0.05 for s, e in zip(sent, expected)), (sent, expected)


def test_plans_need_a_bound_and_a_sane_level() -> None:
    with pytest.raises(ValueError, match="bound"):
        LoadPlan("closed", 2)
    with pytest.raises(ValueError, match="integer"):
        LoadPlan("closed", 1.5, requests=3)
    assert LoadPlan("open", 0.5, requests=3).label == "rate=0.5/s"
