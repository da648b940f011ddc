"""``diptych serve --dtype bfloat16`` on CPU: every family chats, generates and (where it can) edits.

Each image stage in bf16 is compared with its reference library run in bf16 where it runs
(tests/models/qwen_image/test_bf16.py, tests/models/janus_pro/test_decode.py). Here the whole
server runs in bf16: /v1/models says so, and each task answers through real HTTP.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator

import numpy as np
import openai
import pytest
from PIL import Image

from diptych.bench.server_process import ServerProcess, serving
from tests.conftest import TinyCheckpoint

pytestmark = pytest.mark.timeout(600)


def _data_url(colour: tuple[int, int, int]) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), colour).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _picture(b64: str | None) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64 or ""))).convert("RGB"))


@pytest.fixture(scope="module", params=["qwen-image-edit", "janus-pro"])
def bf16_server(request: pytest.FixtureRequest, tiny_checkpoint: TinyCheckpoint,
                tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, ServerProcess]]:
    family = request.param
    with serving(tiny_checkpoint(family), tmp_path_factory.mktemp(f"bf16-{family}"), "--dtype", "bfloat16") as server:
        yield family, server


def test_a_bf16_server_chats_generates_and_edits(bf16_server: tuple[str, ServerProcess]) -> None:
    family, server = bf16_server
    client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0, timeout=300)
    (model,) = client.models.list().data
    assert (model.model_extra or {})["dtype"] == "bfloat16"

    completion = client.chat.completions.create(model=model.id, max_tokens=6, temperature=0, messages=[
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": _data_url((220, 20, 20))}},
                                     {"type": "text", "text": "What is in this picture?"}]}])
    assert completion.usage is not None and completion.usage.completion_tokens >= 1

    drawn = client.images.generate(model=model.id, prompt="a red circle", size="64x64",
                                   extra_body={"seed": 1, "num_inference_steps": 2})
    image = _picture(drawn.data[0].b64_json)
    assert image.shape == (64, 64, 3) and image.std() > 0  # a picture, not a constant

    source = base64.b64decode(_data_url((20, 20, 220)).split(",", 1)[1])
    if family == "qwen-image-edit":
        edited = client.images.edit(model=model.id, image=("source.png", source, "image/png"), prompt="make it green",
                                    size="64x64", extra_body={"seed": 2, "num_inference_steps": 2})
        assert _picture(edited.data[0].b64_json).shape == (64, 64, 3)
    else:  # Janus-Pro does not edit: refused by name, in bf16 as in float32
        with pytest.raises(openai.BadRequestError, match="edit"):
            client.images.edit(model=model.id, image=("source.png", source, "image/png"), prompt="make it green")
