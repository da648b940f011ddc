"""Figures of one load run: throughput, latency percentiles, errors by status, goodput.

Conventions (as vLLM's serving benchmark): throughputs divide what *successful* requests
returned by the run's wall time (first request sent to last answer read); latency, time to
first output and inter-token gaps are over successful requests only, since a refusal's
few milliseconds would otherwise pass for speed. Inter-token gaps are pooled over all
requests. Goodput is the rate of successful requests that met every latency objective given.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from diptych.bench.load.client import RequestResult
from diptych.bench.load.driver import LoadRun


def percentile(values: Sequence[float], p: float) -> float:
    """The p-th percentile with linear interpolation between closest ranks (numpy's default method)."""
    if not values:
        raise ValueError("percentile of no values")
    if not 0 <= p <= 100:
        raise ValueError(f"percentile {p} is outside 0..100")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * p / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@dataclass(frozen=True)
class Distribution:
    """Milliseconds."""

    count: int
    mean: float
    p50: float
    p90: float
    p99: float

    @staticmethod
    def of_seconds(values: Sequence[float]) -> Distribution | None:
        if not values:
            return None
        ms = [v * 1000 for v in values]
        return Distribution(len(ms), sum(ms) / len(ms), percentile(ms, 50), percentile(ms, 90), percentile(ms, 99))


@dataclass(frozen=True)
class Slo:
    """Latency objectives in seconds; None: not part of the objective."""

    ttft_s: float | None = None
    latency_s: float | None = None

    @property
    def given(self) -> bool:
        return self.ttft_s is not None or self.latency_s is not None

    def met(self, result: RequestResult) -> bool:
        if not result.ok:
            return False
        if self.latency_s is not None and result.latency_s > self.latency_s:
            return False
        # A request without a first-output time (none arrived) cannot show it met the objective.
        return self.ttft_s is None or (result.ttft_s is not None and result.ttft_s <= self.ttft_s)


@dataclass(frozen=True)
class KindFigures:
    """Latencies of one kind of request (chat, generate, edit) within a run."""

    requests: int
    ok: int
    latency_ms: Distribution | None
    ttft_ms: Distribution | None
    itl_ms: Distribution | None


@dataclass(frozen=True)
class Summary:
    requests: int
    ok: int
    failed: int
    errors: dict[str, int]  # "429", "500", "ConnectError", "stream_error", ... → count
    duration_s: float
    requests_per_s: float
    images: int
    images_per_s: float
    partial_images: int
    output_tokens: int
    output_tokens_per_s: float
    latency_ms: Distribution | None
    ttft_ms: Distribution | None
    itl_ms: Distribution | None
    slo_met: int | None
    goodput_per_s: float | None
    kinds: dict[str, KindFigures]


def _kind_figures(results: Sequence[RequestResult]) -> KindFigures:
    ok = [r for r in results if r.ok]
    return KindFigures(
        requests=len(results),
        ok=len(ok),
        latency_ms=Distribution.of_seconds([r.latency_s for r in ok]),
        ttft_ms=Distribution.of_seconds([r.ttft_s for r in ok if r.ttft_s is not None]),
        itl_ms=Distribution.of_seconds([gap for r in ok for gap in r.itl_s]),
    )


def summarize(run: LoadRun, slo: Slo = Slo()) -> Summary:
    results = run.results
    ok = [r for r in results if r.ok]
    # A run that sent nothing (a duration shorter than the first arrival) has no rate to report.
    duration = run.wall_s if run.wall_s > 0 else math.inf
    images = sum(r.images for r in ok)
    tokens = sum(r.output_tokens for r in ok)
    met = sum(1 for r in results if slo.met(r)) if slo.given else None
    kinds = sorted({r.kind for r in results})
    overall = _kind_figures(results)
    return Summary(
        requests=len(results),
        ok=len(ok),
        failed=len(results) - len(ok),
        errors=dict(sorted(Counter(r.error for r in results if r.error is not None).items())),
        duration_s=run.wall_s,
        requests_per_s=len(ok) / duration,
        images=images,
        images_per_s=images / duration,
        partial_images=sum(r.partial_images for r in ok),
        output_tokens=tokens,
        output_tokens_per_s=tokens / duration,
        latency_ms=overall.latency_ms,
        ttft_ms=overall.ttft_ms,
        itl_ms=overall.itl_ms,
        slo_met=met,
        goodput_per_s=None if met is None else met / duration,
        kinds={kind: _kind_figures([r for r in results if r.kind == kind]) for kind in kinds},
    )
