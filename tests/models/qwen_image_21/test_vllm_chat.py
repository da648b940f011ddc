"""Chat on the tiny Qwen-Image 2.1 through vLLM's Qwen3-VL: greedy tokens equal transformers' (one engine start)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import torch

from diptych import compat
from diptych.engine.ar_engine import AREngine
from diptych.models.base import ChatPrompt
from diptych.models.qwen_image_21.adapter import QwenImage21Adapter
from diptych.types import ChatMessage, ImagePart, SamplingOptions, TextPart
from tests.conftest import TinyCheckpoint
from tests.engine.ar_helpers import ar_config, collect, marked_image

compat.install()

from transformers import AutoProcessor, Qwen3VLForConditionalGeneration  # noqa: E402  (after compat.install)

# The engine fixture lives in the session's event loop (vLLM's output handler is bound to it).
SESSION_LOOP = pytest.mark.asyncio(loop_scope="session")

GREEDY = SamplingOptions(max_tokens=12, temperature=0.0)
MAX_MODEL_LEN = 1024


@pytest.fixture(scope="module")
def adapter(tiny_checkpoint: TinyCheckpoint) -> QwenImage21Adapter:
    return QwenImage21Adapter(tiny_checkpoint("qwen-image-2.1"))


@pytest.fixture(scope="module")
def staged(adapter: QwenImage21Adapter, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return adapter.prepare_ar_model(tmp_path_factory.mktemp("staging"))


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def engine(staged: Path) -> AsyncIterator[AREngine]:
    # Eager, as `diptych serve` starts a model this small on CPU (orchestrator.runs_eagerly).
    ar = AREngine(staged, ar_config(staged, MAX_MODEL_LEN), enforce_eager=True)
    await ar.start()
    yield ar
    await ar.shutdown()


@pytest.fixture(scope="module")
def processor(staged: Path) -> Any:
    return AutoProcessor.from_pretrained(staged)


@pytest.fixture(scope="module")
def reference(staged: Path) -> Any:
    return Qwen3VLForConditionalGeneration.from_pretrained(staged).eval()


CHATS = (
    (ChatMessage("user", (ImagePart(marked_image((200, 30, 30))), TextPart("What is in this picture?"))),),
    (ChatMessage("user", (ImagePart(marked_image((30, 30, 200))), TextPart("What is in this picture?"))),),
    (ChatMessage("system", (TextPart("Be brief."),)),
     ChatMessage("user", (TextPart("Compare "), ImagePart(marked_image((10, 200, 10), (96, 64))), TextPart(" with "),
                          ImagePart(marked_image((250, 250, 0)))))),
)


def _transformers_greedy(reference: Any, processor: Any, prompt: ChatPrompt) -> tuple[list[int], int]:
    inputs = processor(text=[prompt.text], images=list(prompt.images) or None, return_tensors="pt")
    with torch.no_grad():
        out = reference.generate(**inputs, max_new_tokens=GREEDY.max_tokens, do_sample=False)
    return out[0, inputs["input_ids"].shape[1]:].tolist(), inputs["input_ids"].shape[1]


@SESSION_LOOP
async def test_greedy_tokens_equal_transformers_alone_and_together(
    engine: AREngine, adapter: QwenImage21Adapter, processor: Any, reference: Any
) -> None:
    prompts = [adapter.render_chat(messages) for messages in CHATS]
    expected = [_transformers_greedy(reference, processor, prompt) for prompt in prompts]
    for index, (prompt, (tokens_ref, prompt_len)) in enumerate(zip(prompts, expected, strict=True)):
        tokens, _, finished = await collect(engine.generate(prompt, GREEDY, f"alone-{index}"))
        assert tokens == tokens_ref, f"chat {index}"
        assert finished.prompt_tokens == prompt_len == adapter.count_prompt_tokens(prompt)
    together = await asyncio.gather(*(collect(engine.generate(p, GREEDY, f"together-{i}"))
                                      for i, p in enumerate(prompts)))
    assert [tokens for tokens, _, _ in together] == [tokens for tokens, _ in expected]
    assert all(len(tokens) >= 4 for tokens, _ in expected), expected  # no early stop: the equality has weight
    # Guard against a degenerate model: the answer depends on the image (chats 0 and 1 differ only there).
    assert expected[0][0] != expected[1][0]
    assert engine.num_unfinished_requests() == 0
