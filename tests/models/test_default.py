"""The embedded default model: the shipped micro checkpoint, served when no ``--model`` is given.

Its ShapesBench scores are measured through a real server started without ``--model``, on a
small fixed sample so that CI stays fast, and asserted a few points below what that sample
scored when the checkpoint was committed. The full measurement is in docs/architecture.md,
"Training the micro model". The same server replays the README's quickstart.
"""

from __future__ import annotations

import asyncio
import base64
import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import openai
import pytest
from PIL import Image

from diptych.bench import quality
from diptych.bench.server_process import ServerProcess, serving
from diptych.models.default import DEFAULT_DIR, default_checkpoint
from diptych.models.registry import load_adapter
from training.micro.checkpoint import MAX_CHECKPOINT_BYTES, weights_bytes

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = {"vqa": 60, "t2i": 24, "edit": 24}  # ShapesBench seed 0: held-out scenes
# Measured on SAMPLE through `diptych serve` (no --model) when the checkpoint was committed:
# VQA 60/60, text-to-image 23/24, edit 17/24 (all 105 edits of seed 0: 82/105).
LOWER_BOUNDS = {"vqa": 0.95, "t2i": 0.875, "edit": 0.66}
# In every run (SAMPLE needs --run-slow): the first two items of each task of the same seed,
# which measured 2/2, 2/2, 2/2 through `diptych serve` when this was written.
SMOKE = {"vqa": 2, "t2i": 2, "edit": 2}
SMOKE_BOUNDS = {"vqa": 1.0, "t2i": 0.5, "edit": 0.5}

# The README's quickstart: its requests, the answer it prints and the images it shows.
QUICKSTART_PROMPT, QUICKSTART_SEED = "a red circle to the left of a blue square", 1
QUICKSTART_QUESTION, QUICKSTART_ANSWER = "what color is the square?", "blue"
QUICKSTART_EDIT, QUICKSTART_EDIT_SEED = "make the square green", 2
QUICKSTART_IMAGES = ROOT / "docs" / "images"


def test_the_default_is_the_shipped_micro_checkpoint() -> None:
    model_dir = default_checkpoint()
    assert model_dir == DEFAULT_DIR and model_dir.name == "diptych-micro"
    adapter = load_adapter(model_dir)
    assert adapter.family == "qwen-image"
    capabilities = adapter.capabilities()
    assert capabilities.understand and capabilities.generate and capabilities.edit
    assert 0 < weights_bytes(model_dir) <= MAX_CHECKPOINT_BYTES


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with serving(None, tmp_path_factory.mktemp("default-server")) as process:
        yield process


def assert_scores(server: ServerProcess, sample: dict[str, int], bounds: dict[str, float]) -> None:
    config = quality.QualityConfig(url=server.base_url, seed=0, **sample)
    report = asyncio.run(quality.run_bench(config))
    assert report["model"] == "diptych-micro"
    scores = {task: report[task]["accuracy"] for task in sample}
    for task, bound in bounds.items():
        assert report[task]["errors"] == 0, report[task]["failures"]
        assert scores[task] >= bound, (task, scores, report[task]["failures"])


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_the_default_model_answers_draws_and_edits_through_a_server(server: ServerProcess) -> None:
    assert_scores(server, SAMPLE, LOWER_BOUNDS)


@pytest.mark.timeout(300)
def test_a_shapesbench_smoke_sample_through_the_server(server: ServerProcess) -> None:
    assert_scores(server, SMOKE, SMOKE_BOUNDS)


def decoded(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.int16)


def assert_same_picture(b64: str, committed: Path) -> None:
    # Not byte-equal: another CPU's kernels may round differently; a few levels at most.
    returned, shown = decoded(base64.b64decode(b64)), decoded(committed.read_bytes())
    assert returned.shape == shown.shape
    assert np.abs(returned - shown).mean() < 2.0, committed.name


@pytest.mark.timeout(300)
def test_the_readme_quickstart_returns_what_the_readme_shows(server: ServerProcess) -> None:
    readme = (ROOT / "README.md").read_text()
    for text in (QUICKSTART_PROMPT, QUICKSTART_QUESTION, QUICKSTART_EDIT, "quickstart-picture.png",
                 "quickstart-edited.png"):
        assert text in readme
    client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0, timeout=120)
    picture = client.images.generate(model="diptych-micro", prompt=QUICKSTART_PROMPT,
                                     extra_body={"seed": QUICKSTART_SEED}).data[0].b64_json
    assert_same_picture(picture, QUICKSTART_IMAGES / "quickstart-picture.png")
    answer = client.chat.completions.create(model="diptych-micro", max_tokens=8, messages=[{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64," + picture}},
        {"type": "text", "text": QUICKSTART_QUESTION}]}]).choices[0].message.content
    assert answer == QUICKSTART_ANSWER and f"\n{QUICKSTART_ANSWER}\n" in readme
    edited = client.images.edit(model="diptych-micro", image=("picture.png", base64.b64decode(picture), "image/png"),
                                prompt=QUICKSTART_EDIT, extra_body={"seed": QUICKSTART_EDIT_SEED}).data[0].b64_json
    assert_same_picture(edited, QUICKSTART_IMAGES / "quickstart-edited.png")
