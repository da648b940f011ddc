"""Reading a running server's state from the outside: its Prometheus metrics, polled; a slow job to watch."""

from __future__ import annotations

import base64
import io
import re
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
from PIL import Image

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


# Denoising long enough to be still running when a test acts on the server: at 300 steps, under
# a training job's load, the job once ended before the test's next two requests did, and
# graceful shutdown had nothing to drain; 1,000 steps once took over 30 s under load. Servers
# that drain it give it SLOW_DRAIN_S.
SLOW_GENERATION: dict[str, Any] = {"prompt": "a slow job", "size": "128x128", "num_inference_steps": 1000, "seed": 3}
SLOW_DRAIN_S = 300


class SlowGeneration:
    """A slow generate request sent from a thread; returns once the flow engine is denoising it."""

    def __init__(self, server: ServerProcess, model: str) -> None:
        self.body = {"model": model, **SLOW_GENERATION}
        self._responses: list[httpx.Response] = []
        self._thread = threading.Thread(target=lambda: self._responses.append(
            httpx.post(f"{server.base_url}/v1/images/generations", json=self.body, timeout=SLOW_DRAIN_S)))
        self._thread.start()
        wait_until(lambda: metric(server, "diptych_active_batch_size", engine="flow") >= 1, 60, "denoising to start")

    def response(self, timeout_s: float = SLOW_DRAIN_S) -> httpx.Response:
        self._thread.join(timeout_s)
        assert self._responses, f"the slow generation did not finish within {timeout_s} s"
        return self._responses[0]


def assert_answers_follow_the_picture(client: Any, model: str) -> None:
    """Greedy answers (openai SDK ``client``) about a red and a blue picture differ: the image reaches the model."""
    answers = []
    for colour in ((220, 20, 20), (20, 20, 220)):
        buffer = io.BytesIO()
        Image.new("RGB", (64, 48), colour).save(buffer, format="PNG")
        url = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
        completion = client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": url}},
                {"type": "text", "text": "What is in this picture?"},
            ]}],
            max_tokens=8,
            temperature=0,
        )
        assert completion.usage is not None and completion.usage.completion_tokens >= 1
        answers.append(completion.choices[0].message.content)
    assert answers[0] != answers[1]
