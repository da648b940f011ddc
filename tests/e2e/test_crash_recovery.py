"""Crash recovery over real HTTP, on a server of its own (tiny edit checkpoint): SIGKILL the flow
worker, then vLLM's engine-core process, while requests are in flight. Those requests get 503
within 5 s, /health reports the component restarting, the component comes back, and later
requests succeed. Last, Ctrl+C as a terminal sends it (SIGINT to the whole process group):
the children ignore it, the gateway drains, the request in flight finishes, exit code 0."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import psutil
import pytest

from diptych.bench.server_process import ServerProcess, start_server
from tests.e2e.probes import SLOW_DRAIN_S, SlowGeneration, metric, wait_until

MODEL = "tiny-qwen-image-edit"
RECOVERY_TIMEOUT_S = 300  # a new vLLM engine on a loaded 2-core machine


@pytest.fixture(scope="module")
def server(edit_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = start_server(edit_checkpoint, tmp_path_factory.mktemp("crash"), "--queue-depth", "64",
                           "--max-steps", "100000", "--shutdown-timeout", str(SLOW_DRAIN_S))
    yield process
    process.stop()


def _child(server: ServerProcess, name: str) -> psutil.Process:
    assert server.process is not None
    found = [p for p in psutil.Process(server.process.pid).children(recursive=True)
             if p.status() != psutil.STATUS_ZOMBIE and name in p.name()]
    assert len(found) == 1, [(p.pid, p.name()) for p in psutil.Process(server.process.pid).children(recursive=True)]
    return found[0]


def _health(server: ServerProcess) -> httpx.Response:
    return httpx.get(f"{server.base_url}/health", timeout=5)


def _assert_503(response: httpx.Response) -> None:
    assert response.status_code == 503, response.text
    assert response.json()["error"]["type"] == "service_unavailable_error"


def test_killing_the_flow_worker(server: ServerProcess) -> None:
    worker = _child(server, "diptych-flow")
    body = {"model": MODEL, "prompt": "forever", "size": "64x64", "num_inference_steps": 100_000, "seed": 1}
    with ThreadPoolExecutor(2) as pool:
        doomed = [pool.submit(httpx.post, f"{server.base_url}/v1/images/generations", json=body, timeout=60)
                  for _ in range(2)]
        wait_until(lambda: metric(server, "diptych_active_batch_size", engine="flow") >= 2, 60, "both jobs to run")
        worker.kill()
        killed_at = time.monotonic()
        for future in doomed:
            response = future.result(timeout=10)
            _assert_503(response)
        assert time.monotonic() - killed_at < 5
    health = _health(server)
    assert health.status_code == 503
    assert health.json()["status"] == "restarting" and health.json()["components"]["flow"] == "restarting"
    refused = httpx.post(f"{server.base_url}/v1/images/generations", json={**body, "num_inference_steps": 2},
                         timeout=10)
    _assert_503(refused)

    wait_until(lambda: _health(server).status_code == 200, RECOVERY_TIMEOUT_S, "the flow worker to come back")
    assert _child(server, "diptych-flow").pid != worker.pid
    response = httpx.post(f"{server.base_url}/v1/images/generations", json={**body, "num_inference_steps": 2},
                          timeout=60)
    assert response.status_code == 200, response.text
    assert len(response.json()["data"]) == 1


def _chat(server: ServerProcess, **extra: object) -> httpx.Response:
    body = {"model": MODEL, "max_tokens": 1024, "messages": [{"role": "user", "content": "tell me everything"}],
            **extra}
    return httpx.post(f"{server.base_url}/v1/chat/completions", json=body, timeout=60)


def _stream(server: ServerProcess, seed: int) -> str:
    """How a streamed chat ended: ``done``, ``error:<type>`` (after its headers), or its refusal status."""
    body = {"model": MODEL, "max_tokens": 1024, "stream": True, "temperature": 1.0, "seed": seed,
            "messages": [{"role": "user", "content": "and keep going"}]}
    with httpx.stream("POST", f"{server.base_url}/v1/chat/completions", json=body, timeout=60) as response:
        if response.status_code != 200:
            return str(response.status_code)
        event = "message"
        for line in response.iter_lines():
            if line.startswith("event: "):
                event = line[len("event: "):]
            elif line == "data: [DONE]":
                return "done"
            elif line.startswith("data: ") and event == "error":
                return f"error:{json.loads(line[len('data: '):])['error']['type']}"
    return "truncated"


def test_killing_the_vllm_engine_core(server: ServerProcess) -> None:
    core = _child(server, "EngineCore")
    # Clients that send chats back to back (however short the model's answers), so that at
    # the kill each has one in flight: (started, ended, outcome) per request.
    records: list[tuple[float, float, str]] = []
    stop = threading.Event()

    def client(number: int) -> None:
        seed = number * 1000
        while not stop.is_set():
            seed += 1
            started = time.monotonic()
            if number % 3 == 0:
                outcome = _stream(server, seed)
            else:
                outcome = str(_chat(server, temperature=1.0, seed=seed).status_code)
            records.append((started, time.monotonic(), outcome))

    with ThreadPoolExecutor(9) as pool:
        clients = [pool.submit(client, number) for number in range(9)]
        wait_until(lambda: len(records) >= 9, 60, "the chats to flow")
        core.kill()
        killed_at = time.monotonic()
        time.sleep(6)
        stop.set()
        for future in clients:
            future.result(timeout=60)
    cut_off = [(ended, outcome) for started, ended, outcome in records if started < killed_at < ended]
    assert len(cut_off) >= 5, records[-20:]  # nine clients: nearly all had one in flight
    assert all(ended - killed_at < 5 for ended, _ in cut_off), cut_off
    outcomes = [outcome for _, outcome in cut_off]
    # Those that were answered as the core died may still be 200 or done; the others are 503s
    # (a stream whose headers were out: an error event with the 503 envelope).
    assert set(outcomes) <= {"200", "done", "503", "error:service_unavailable_error"}, outcomes
    assert sum(o in ("503", "error:service_unavailable_error") for o in outcomes) >= 1, outcomes
    later = {outcome for started, _, outcome in records if started > killed_at}
    assert later <= {"503"}, later  # refused while the engine is rebuilt
    health = _health(server)
    assert health.status_code == 503 and health.json()["components"]["ar"] == "restarting", health.text
    _assert_503(_chat(server))

    wait_until(lambda: _health(server).status_code == 200, RECOVERY_TIMEOUT_S, "the vLLM engine to come back")
    assert _child(server, "EngineCore").pid != core.pid
    response = _chat(server, max_tokens=8)
    assert response.status_code == 200, response.text
    assert response.json()["usage"]["completion_tokens"] >= 1


def test_ctrl_c_drains_instead_of_killing_the_engines(server: ServerProcess) -> None:
    """Last in this module: it stops the server."""
    assert server.process is not None
    flow, core = _child(server, "diptych-flow"), _child(server, "EngineCore")
    job = SlowGeneration(server, MODEL)
    assert server.log_path is not None
    log_offset = len(server.log_path.read_bytes())
    os.killpg(server.process.pid, signal.SIGINT)  # what a terminal does on Ctrl+C
    wait_until(lambda: _health(server).json()["status"] == "stopping", 10, "the drain to begin")
    time.sleep(1)
    assert flow.is_running() and core.is_running()  # neither took the SIGINT as its own
    assert flow.status() != psutil.STATUS_ZOMBIE and core.status() != psutil.STATUS_ZOMBIE
    response = job.response()
    assert response.status_code == 200, response.text
    assert server.process.wait(60) == 0, server.log()
    log = server.log_path.read_bytes()[log_offset:].decode(errors="replace")
    # Each engine process stopped when the gateway stopped it (SIGTERM), not at the SIGINT.
    assert "signal=SIGINT" not in log and "died" not in log, log[-3000:]
