"""A client that goes away stops costing compute: its engine request is aborted and the engines return to idle."""

from __future__ import annotations

import time

import httpx
import pytest

from tests.e2e.probes import metric, wait_until
from diptych.bench.server_process import ServerProcess

MODEL = "tiny-qwen-image-edit"
# Long enough (tens of seconds on CPU) that it is surely still running when the client leaves.
LONG_IMAGE = {"model": MODEL, "prompt": "a long job", "size": "256x256", "n": 2, "num_inference_steps": 900, "seed": 1}


def flow_busy(server: ServerProcess) -> bool:
    return metric(server, "diptych_active_batch_size", engine="flow") >= 1


def assert_flow_stops(server: ServerProcess, steps_before: float) -> None:
    wait_until(lambda: not flow_busy(server), 5, "the flow decoder to drop the request")
    wait_until(lambda: metric(server, "diptych_queue_depth", engine="image") == 0, 5, "the image queue to empty")
    settled = metric(server, "diptych_denoising_steps_total")
    time.sleep(1.0)
    assert metric(server, "diptych_denoising_steps_total") == settled  # nothing runs any more
    assert settled - steps_before < LONG_IMAGE["num_inference_steps"]  # and the job never finished
    assert httpx.get(f"{server.base_url}/health").json()["status"] == "ok"


def test_streamed_generation_abandoned_mid_way(server: ServerProcess) -> None:
    steps_before = metric(server, "diptych_denoising_steps_total")
    with httpx.Client(timeout=60) as client:
        with client.stream("POST", f"{server.base_url}/v1/images/generations",
                           json={**LONG_IMAGE, "stream": True, "partial_images": 3}):
            wait_until(lambda: flow_busy(server), 30, "the job to start denoising")
        # Leaving the block closes the connection mid-stream.
    assert_flow_stops(server, steps_before)


def test_plain_generation_abandoned_mid_way(server: ServerProcess) -> None:
    steps_before = metric(server, "diptych_denoising_steps_total")
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{server.base_url}/v1/images/generations", json=LONG_IMAGE,
                   timeout=httpx.Timeout(10, read=2.0))
    assert_flow_stops(server, steps_before)
