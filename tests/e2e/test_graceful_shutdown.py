"""SIGTERM to a real server on the tiny edit checkpoint: the generation in flight completes, a request
sent meanwhile gets 503 in the envelope, /health says stopping, and the process exits 0."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import httpx
import pytest
from PIL import Image

from tests.e2e.probes import SLOW_DRAIN_S, SlowGeneration, metric, wait_until
from diptych.bench.server_process import start_server

MODEL = "tiny-qwen-image-edit"


# A server of its own and a slow generation (~60 s). In make test, tests/server/test_shutdown_process.py
# drives the same drain through a real server process over a scripted engine.
@pytest.mark.slow
def test_sigterm_finishes_the_work_in_flight_and_refuses_new_work(
    edit_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    server = start_server(edit_checkpoint, tmp_path_factory.mktemp("shutdown"), "--max-steps", "1000",
                          "--shutdown-timeout", str(SLOW_DRAIN_S))
    try:
        job = SlowGeneration(server, MODEL)
        body = job.body
        steps_at_signal = metric(server, "diptych_denoising_steps_total")
        server.process.terminate()  # SIGTERM
        wait_until(lambda: httpx.get(f"{server.base_url}/health", timeout=5).status_code == 503, 10,
                   "/health to report the drain")
        assert httpx.get(f"{server.base_url}/health", timeout=5).json()["status"] == "stopping"
        refused = httpx.post(f"{server.base_url}/v1/images/generations", json={**body, "num_inference_steps": 2},
                             timeout=10)
        assert refused.status_code == 503, refused.text
        assert refused.json()["error"]["code"] == "shutting_down"
        response = job.response()
        assert response.status_code == 200, response.text
        image = Image.open(io.BytesIO(base64.b64decode(response.json()["data"][0]["b64_json"])))
        assert image.size == (128, 128)
        assert steps_at_signal < body["num_inference_steps"]  # the job was mid-way at the signal
        assert server.process.wait(60) == 0, server.log()
    finally:
        server.stop()
