"""SIGTERM to a real server process (scripted engine): a request in flight completes, a new one gets 503
while the drain lasts, and the process exits 0; past the drain timeout, the request left gets 503."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from diptych.bench.server_process import free_port

ROOT = Path(__file__).resolve().parents[2]


class Server:
    def __init__(self, step_delay: float, shutdown_timeout: float, log_path: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        env = {k: v for k, v in os.environ.items() if not k.startswith("DIPTYCH_")}
        with log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "tests.server.shutdown_app", "--port", str(self.port),
                 "--step-delay", str(step_delay), "--shutdown-timeout", str(shutdown_timeout)],
                cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.log()
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.1)
        raise AssertionError(f"server did not start:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


@pytest.fixture
def start(tmp_path: Path) -> Iterator:
    servers: list[Server] = []

    def factory(step_delay: float, shutdown_timeout: float) -> Server:
        servers.append(Server(step_delay, shutdown_timeout, tmp_path / f"server-{len(servers)}.log"))
        return servers[-1]

    yield factory
    for server in servers:
        server.kill()


def in_background(fn) -> tuple[threading.Thread, dict]:  # noqa: ANN001
    result: dict = {}

    def run() -> None:
        try:
            result["value"] = fn()
        except Exception as exc:  # reported by the test's assertions
            result["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    return thread, result


def wait_in_flight(server: Server, count: int) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        text = httpx.get(f"{server.url}/metrics", timeout=5).text
        if f'diptych_queue_depth{{engine="image"}} {float(count)}' in text:
            return
        time.sleep(0.05)
    raise AssertionError("the request never started")


# SIGINT: Ctrl+C, which a terminal sends to the whole process group (tests/e2e/test_crash_recovery.py
# checks that the engines' processes ignore it).
@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_sigterm_lets_the_request_in_flight_finish_and_refuses_new_ones(start, stop: int) -> None:  # noqa: ANN001
    server = start(step_delay=1.5, shutdown_timeout=30)  # a generation takes 2 steps: 3 s
    thread, result = in_background(lambda: httpx.post(f"{server.url}/v1/images/generations",
                                                      json={"prompt": "slow", "n": 2}, timeout=30))
    wait_in_flight(server, 1)
    server.process.send_signal(stop)
    time.sleep(0.3)
    refused = httpx.post(f"{server.url}/v1/images/generations", json={"prompt": "late"}, timeout=10)
    health = httpx.get(f"{server.url}/health", timeout=10)
    assert server.process.poll() is None  # still draining
    thread.join(30)
    assert refused.status_code == 503, refused.text
    assert refused.json()["error"]["code"] == "shutting_down" and refused.headers["connection"] == "close"
    assert health.status_code == 503 and health.json()["status"] == "stopping"
    finished = result["value"]
    assert finished.status_code == 200, finished.text
    assert len(finished.json()["data"]) == 2
    assert server.process.wait(20) == 0, server.log()
    with pytest.raises(httpx.ConnectError):  # and then it is gone
        httpx.get(f"{server.url}/health", timeout=2)


def test_past_the_drain_timeout_the_request_left_gets_503_and_the_exit_is_still_0(start) -> None:  # noqa: ANN001
    server = start(step_delay=30, shutdown_timeout=0.5)
    thread, result = in_background(lambda: httpx.post(f"{server.url}/v1/images/generations",
                                                      json={"prompt": "too slow"}, timeout=30))
    wait_in_flight(server, 1)
    started = time.monotonic()
    server.process.send_signal(signal.SIGTERM)
    thread.join(20)
    answer = result["value"]
    assert answer.status_code == 503 and answer.json()["error"]["code"] == "shutting_down", answer.text
    assert server.process.wait(20) == 0, server.log()
    assert time.monotonic() - started < 10
