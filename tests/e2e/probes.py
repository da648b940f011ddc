"""Reading a running server's state from the outside: its Prometheus metrics, polled."""

from __future__ import annotations

import re
import time
from collections.abc import Callable

import httpx

from diptych.bench.server_process import ServerProcess


def metric(server: ServerProcess, name: str, **labels: str) -> float:
    text = httpx.get(f"{server.base_url}/metrics", timeout=10).text
    selector = ",".join(f'{k}="{v}"' for k, v in labels.items())
    pattern = rf"^{re.escape(name)}{re.escape('{' + selector + '}') if selector else ''} (\S+)$"
    match = re.search(pattern, text, re.M)
    assert match, f"{name}{{{selector}}} not in /metrics"
    return float(match.group(1))


def wait_until(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")
