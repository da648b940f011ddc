"""A text-to-image checkpoint (no edit capability) served with a one-deep queue and a short deadline:
real 429s, 504s and capability errors over HTTP, and understanding through the staged processor."""

from __future__ import annotations

import base64
import io
import threading
from collections.abc import Iterator

import httpx
import pytest
from PIL import Image

from diptych.bench.server_process import ServerProcess, serving
from tests.conftest import TinyCheckpoint
from tests.e2e.probes import metric, wait_until

MODEL = "tiny-t2i"
LONG_IMAGE = {"model": MODEL, "prompt": "slow", "size": "256x256", "n": 2, "num_inference_steps": 900}


@pytest.fixture(scope="module")
def t2i_server(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: TinyCheckpoint) -> Iterator[ServerProcess]:
    with serving(tiny_checkpoint("qwen-image", seed=1), tmp_path_factory.mktemp("t2i-server"),
                 "--served-model-name", MODEL, "--queue-depth", "1",
                 "--request-timeout", "4", "--max-steps", "1000") as server:
        yield server


def test_models_and_chat_without_a_processor_folder(t2i_server: ServerProcess) -> None:
    (model,) = httpx.get(f"{t2i_server.base_url}/v1/models").json()["data"]
    assert model["capabilities"]["tasks"] == ["understand", "generate"]
    buffer = io.BytesIO()
    Image.new("RGB", (56, 56), (0, 0, 255)).save(buffer, format="PNG")
    url = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
    response = httpx.post(
        f"{t2i_server.base_url}/v1/chat/completions",
        json={"model": MODEL, "max_tokens": 4, "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "colour?"}]}]},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    assert response.json()["usage"]["prompt_tokens"] > 8  # the image's tokens are in the prompt


def test_edit_names_the_missing_capability(t2i_server: ServerProcess) -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32)).save(buffer, format="PNG")
    response = httpx.post(f"{t2i_server.base_url}/v1/images/edits", data={"prompt": "x"},
                          files={"image": ("a.png", buffer.getvalue(), "image/png")})
    assert response.status_code == 400
    error = response.json()["error"]
    assert "edit" in error["message"] and error["code"] == "capability_not_supported"


def test_queue_full_is_429_then_deadline_is_504(t2i_server: ServerProcess) -> None:
    url = f"{t2i_server.base_url}/v1/images/generations"
    first: dict = {}

    def long_request() -> None:
        first["response"] = httpx.post(url, json=LONG_IMAGE, timeout=60)

    worker = threading.Thread(target=long_request)
    worker.start()
    try:
        # Probe only once the long request holds the only slot.
        wait_until(lambda: metric(t2i_server, "diptych_queue_depth", engine="image") == 1, 10, "the slot to fill")
        refused = httpx.post(url, json={**LONG_IMAGE, "num_inference_steps": 1}, timeout=30)
        assert refused.status_code == 429, refused.text
        assert refused.json()["error"]["type"] == "rate_limit_error"
        assert int(refused.headers["retry-after"]) >= 1
    finally:
        worker.join(30)
    assert first["response"].status_code == 504, first["response"].text  # 900 steps do not fit in 4 s
    assert first["response"].json()["error"]["type"] == "timeout_error"
    # The slot is free again and the server healthy.
    ok = httpx.post(url, json={"model": MODEL, "prompt": "quick", "size": "32x32", "num_inference_steps": 2},
                    timeout=30)
    assert ok.status_code == 200, ok.text
    assert httpx.get(f"{t2i_server.base_url}/health").json()["status"] == "ok"
