"""Prometheus metrics: HTTP requests and latency by endpoint and status, and engine gauges read at scrape time.

Each app owns its registry (no module-level state), so several apps can live in one process.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from diptych.engine.protocol import EngineStats
from diptych.types import CacheStats

_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class _EngineCollector(Collector):
    def __init__(self, stats: Callable[[], EngineStats]) -> None:
        self._stats = stats

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        stats = self._stats()
        queue = GaugeMetricFamily("diptych_queue_depth", "Requests admitted and not finished, per engine.",
                                  labels=["engine"])
        for name, value in stats.in_flight.items():
            queue.add_metric([name], value)
        yield queue
        batch = GaugeMetricFamily("diptych_active_batch_size", "Sequences or images in the running batch.",
                                  labels=["engine"])
        for name, value in stats.active_batch.items():
            batch.add_metric([name], value)
        yield batch
        yield CounterMetricFamily("diptych_generated_tokens", "Completion tokens generated (rate() gives tokens/s).",
                                  value=stats.generated_tokens_total)
        yield CounterMetricFamily("diptych_denoising_steps", "Denoising steps run (rate() gives steps/s).",
                                  value=stats.denoising_steps_total)
        yield from _cache_metrics(stats.flow_caches)
        yield from _worker_metrics(stats)


def _worker_metrics(stats: EngineStats) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
    """Each flow-decoder worker of the pool, labelled by its index and device."""
    labels = ["worker", "device"]
    up = GaugeMetricFamily("diptych_flow_worker_up", "1 while the worker serves, else 0.", labels=labels)
    active = GaugeMetricFamily("diptych_flow_worker_active_images", "Images the worker is denoising.", labels=labels)
    steps = CounterMetricFamily("diptych_flow_worker_denoising_steps", "Denoising steps the worker ran.", labels=labels)
    restarts = CounterMetricFamily("diptych_flow_worker_restarts", "Times the worker was replaced after dying.",
                                   labels=labels)
    for worker in stats.flow_workers:
        key = [str(worker.index), worker.device]
        up.add_metric(key, 1.0 if worker.state == "ok" else 0.0)
        active.add_metric(key, worker.active_images)
        steps.add_metric(key, worker.steps_total)
        restarts.add_metric(key, worker.restarts)
    yield from (up, active, steps, restarts)


def _cache_metrics(caches: dict[str, CacheStats]) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
    """The flow worker's caches across requests (prompt embeddings, prefix keys and values), by name."""
    hits = CounterMetricFamily("diptych_flow_cache_hits", "Lookups that found their entry.", labels=["cache"])
    misses = CounterMetricFamily("diptych_flow_cache_misses", "Lookups that did not.", labels=["cache"])
    held = GaugeMetricFamily("diptych_flow_cache_bytes", "Bytes the cache holds.", labels=["cache"])
    entries = GaugeMetricFamily("diptych_flow_cache_entries", "Entries the cache holds.", labels=["cache"])
    for name, cache in sorted(caches.items()):
        hits.add_metric([name], cache.hits)
        misses.add_metric([name], cache.misses)
        held.add_metric([name], cache.bytes)
        entries.add_metric([name], cache.entries)
    yield from (hits, misses, held, entries)


class Metrics:
    def __init__(self, stats: Callable[[], EngineStats]) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("diptych_requests", "HTTP requests by endpoint and status.",
                                ["endpoint", "status"], registry=self.registry)
        self.latency = Histogram("diptych_request_duration_seconds", "HTTP request latency (to the last byte).",
                                 ["endpoint", "status"], buckets=_LATENCY_BUCKETS, registry=self.registry)
        self.registry.register(_EngineCollector(stats))


class MetricsMiddleware:
    """Times each request to its last byte; the endpoint label is the route template, never the raw path."""

    def __init__(self, app: ASGIApp, metrics: Metrics, endpoints: frozenset[str]) -> None:
        self.app = app
        self.metrics = metrics
        self.endpoints = endpoints

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def tracking_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        finally:
            path = scope.get("path", "")
            endpoint = path if path in self.endpoints else "other"
            self.metrics.requests.labels(endpoint, str(status)).inc()
            self.metrics.latency.labels(endpoint, str(status)).observe(time.perf_counter() - started)
