"""Percentiles, distributions and goodput against values computed by hand."""

from __future__ import annotations

import pytest

from diptych.bench.load.client import RequestResult
from diptych.bench.load.driver import LoadPlan, LoadRun
from diptych.bench.load.stats import Distribution, Slo, percentile, summarize


def test_percentile_interpolates_between_closest_ranks() -> None:
    values = [40.0, 10.0, 30.0, 20.0]  # sorted: 10 20 30 40; rank = 3 * p / 100
    assert percentile(values, 0) == 10
    assert percentile(values, 50) == 25  # rank 1.5: halfway between 20 and 30
    assert percentile(values, 90) == pytest.approx(37)  # rank 2.7: 30 + 0.7 * 10
    assert percentile(values, 99) == pytest.approx(39.7)  # rank 2.97
    assert percentile(values, 100) == 40
    assert percentile([5.0], 99) == 5
    with pytest.raises(ValueError):
        percentile([], 50)
    with pytest.raises(ValueError):
        percentile([1.0], 101)


def test_distribution_is_in_milliseconds() -> None:
    dist = Distribution.of_seconds([0.1, 0.2, 0.3])
    assert dist is not None
    assert (dist.count, dist.mean, dist.p50) == (3, pytest.approx(200), pytest.approx(200))
    assert dist.p90 == pytest.approx(280)  # rank 1.8: 200 + 0.8 * 100
    assert Distribution.of_seconds([]) is None


def _result(kind: str, latency: float, ttft: float | None, error: str | None = None, tokens: int = 0,
            images: int = 0, itl: tuple[float, ...] = ()) -> RequestResult:
    return RequestResult(kind=kind, start_s=0.0, latency_s=latency, status=200 if error is None else 429,  # type: ignore[arg-type]
                         error=error, ttft_s=ttft, itl_s=itl, output_tokens=tokens, images=images)


def _run() -> LoadRun:
    results = (
        _result("chat", 0.5, 0.1, tokens=10, itl=(0.02, 0.04)),
        _result("chat", 1.5, 0.3, tokens=6, itl=(0.06,)),
        _result("generate", 2.0, 0.8, images=1),
        _result("generate", 0.9, 0.4, images=2),
        _result("generate", 0.01, None, error="429"),
        _result("edit", 0.02, None, error="ConnectError"),
    )
    return LoadRun(LoadPlan("closed", 2, requests=6), results, wall_s=4.0)


def test_summary_counts_and_rates() -> None:
    s = summarize(_run())
    assert (s.requests, s.ok, s.failed) == (6, 4, 2)
    assert s.errors == {"429": 1, "ConnectError": 1}
    assert (s.images, s.output_tokens) == (3, 16)
    assert (s.requests_per_s, s.images_per_s, s.output_tokens_per_s) == (1.0, 0.75, 4.0)
    # Latency over the four successful requests only: 0.5 0.9 1.5 2.0 s.
    assert s.latency_ms is not None and s.latency_ms.p50 == pytest.approx(1200)
    assert s.itl_ms is not None and s.itl_ms.count == 3 and s.itl_ms.p50 == pytest.approx(40)
    assert s.kinds["generate"].requests == 3 and s.kinds["generate"].ok == 2
    assert s.kinds["edit"].latency_ms is None
    assert s.goodput_per_s is None and s.slo_met is None


def test_goodput_counts_successful_requests_that_met_every_objective() -> None:
    run = _run()
    # Latency ≤ 1 s: the 0.5 s chat and the 0.9 s generate; the fast 429 does not count.
    assert summarize(run, Slo(latency_s=1.0)).slo_met == 2
    # TTFT ≤ 0.35 s: 0.1 and 0.3.
    assert summarize(run, Slo(ttft_s=0.35)).slo_met == 2
    both = summarize(run, Slo(ttft_s=0.35, latency_s=1.0))
    assert both.slo_met == 1 and both.goodput_per_s == pytest.approx(0.25)
