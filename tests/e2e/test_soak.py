"""Soak: a seeded mix of chat, streamed chat, generate, edit and malformed requests at about twice
the server's capacity (client concurrency four times the per-engine queue depth, so 429s happen),
with random client hang-ups, on the tiny edit checkpoint over real HTTP.

Each request gets exactly one terminal outcome of those documented for its kind, the server
counts every request it answered once with a documented status (no 500), the server's
process tree grows by less than 10 % of its resident memory after warm-up, and at the end
it is healthy with nothing left running. ``test_soak_short`` runs in CI (150 requests);
``test_soak_long`` (6,000) runs with ``--run-slow`` and prints its figures.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from diptych.bench.server_process import ServerProcess, serving
from tests.e2e.probes import metric, wait_until
from tests.e2e.soak_client import Mix, SoakReport, allowed_results, run_soak

QUEUE_DEPTH = 8  # per engine: 16 requests in flight at most
CONCURRENCY = 32  # about twice that
MAX_BODY_BYTES = 256 * 1024
DISCONNECT_RATE = 0.1
SERVER_STATUSES = {200, 400, 404, 413, 429, 499, 503, 504}  # 499: a client that hung up (never sent)
API_ENDPOINTS = {"/v1/chat/completions", "/v1/images/generations", "/v1/images/edits", "other"}


@pytest.fixture(scope="module")
def soak_server(edit_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with serving(edit_checkpoint, tmp_path_factory.mktemp("soak"), "--queue-depth", str(QUEUE_DEPTH),
                 "--max-body-bytes", str(MAX_BODY_BYTES), "--max-steps", "50", "--request-timeout", "60") as server:
        yield server


@pytest.mark.slow  # its own server start: 82 s of a CI suite that must stay under 20 minutes
def test_soak_short(soak_server: ServerProcess, tmp_path: Path) -> None:
    _soak(soak_server, total=150, seed=1, out=tmp_path / "soak-short.json")


@pytest.mark.slow
def test_soak_long(soak_server: ServerProcess, tmp_path: Path) -> None:
    _soak(soak_server, total=6000, seed=2, out=tmp_path / "soak-long.json")


def _soak(server: ServerProcess, *, total: int, seed: int, out: Path) -> None:
    mix = Mix(seed, MAX_BODY_BYTES)
    # Warm-up: every kind once (and each edit source/prompt pair), then a burst at full load.
    for kinds, concurrency in ((mix.warm_up(), 4), (mix.kinds(max(60, total // 10)), CONCURRENCY)):
        _check_outcomes(_run(server, mix, kinds, concurrency))
    _wait_idle(server)
    rss_before = _tree_rss(server)
    answered_before = _answered(server)

    report = _run(server, mix, mix.kinds(total), CONCURRENCY)

    _wait_idle(server)
    rss_after = _tree_rss(server)
    answered = _answered(server) - answered_before
    figures = {
        "requests": len(report.outcomes),
        "seconds": round(report.seconds, 1),
        "requests_per_s": round(len(report.outcomes) / report.seconds, 2),
        "outcomes": dict(report.by_result().most_common()),
        "by_kind": {k: dict(v.most_common()) for k, v in sorted(report.by_kind().items())},
        "server_statuses": dict(sorted(_statuses(answered).items())),
        "rss_mib_after_warm_up": round(rss_before / 2**20, 1),
        "rss_mib_at_end": round(rss_after / 2**20, 1),
        "rss_growth_pct": round(100 * (rss_after - rss_before) / rss_before, 2),
    }
    out.write_text(json.dumps(figures, indent=2))
    print(f"\nsoak figures ({out}):\n{json.dumps(figures, indent=2)}")

    assert len(report.outcomes) == total
    _check_outcomes(report)
    results = report.by_result()
    assert results["429"] > 0, "never over capacity"
    served = sum(n for r, n in results.items() if r in ("200", "200+done"))
    assert served >= total // 4, results
    # The server's side: every request it answered, once, with a documented status.
    statuses = _statuses(answered)
    assert set(statuses) <= SERVER_STATUSES, statuses
    assert total - results["disconnected"] <= sum(statuses.values()) <= total, (statuses, results)
    assert rss_after < 1.10 * rss_before, figures
    assert httpx.get(f"{server.base_url}/health", timeout=5).json()["status"] == "ok"


def _run(server: ServerProcess, mix: Mix, kinds: list[str], concurrency: int) -> SoakReport:
    return asyncio.run(run_soak(server.base_url, kinds, mix, concurrency=concurrency, disconnect_rate=DISCONNECT_RATE,
                                client_timeout_s=180))


def _check_outcomes(report: SoakReport) -> None:
    wrong = [o for o in report.outcomes
             if (o.result not in allowed_results(o.kind) and o.result != "disconnected") or o.detail]
    assert not wrong, wrong[:10]


def _wait_idle(server: ServerProcess) -> None:
    def idle() -> bool:
        return all(metric(server, name, engine=engine) == 0 for name, engine in (
            ("diptych_queue_depth", "chat"), ("diptych_queue_depth", "image"),
            ("diptych_active_batch_size", "ar"), ("diptych_active_batch_size", "flow")))

    wait_until(idle, 120, "the engines to be idle")


def _tree_rss(server: ServerProcess) -> int:
    assert server.process is not None
    root = psutil.Process(server.process.pid)
    total = 0
    for process in (root, *root.children(recursive=True)):
        try:
            total += process.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total


_REQUESTS = re.compile(r'^diptych_requests_total\{endpoint="([^"]*)",status="(\d+)"\} (\S+)$', re.MULTILINE)


def _answered(server: ServerProcess) -> Counter[tuple[str, int]]:
    text = httpx.get(f"{server.base_url}/metrics", timeout=10).text
    return Counter({(e, int(s)): int(float(v)) for e, s, v in _REQUESTS.findall(text) if e in API_ENDPOINTS})


def _statuses(answered: Counter[tuple[str, int]]) -> Counter[int]:
    statuses: Counter[int] = Counter()
    for (_, status), count in answered.items():
        if count:
            statuses[status] += count
    return statuses
