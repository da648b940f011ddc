"""The AR engine on vLLM, against transformers, on the tiny Qwen2.5-VL (one engine start per session)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import pytest_asyncio
import torch

from diptych import compat
from diptych.engine.ar_engine import AREngine, ARTextDelta
from diptych.engine.errors import EngineUnavailableError, InvalidRequestError
from diptych.models.base import ChatPrompt
from diptych.models.qwen_image.chat import count_tokens, render_chat
from diptych.models.qwen_image.tiny_vlm import write_tiny_vlm
from diptych.models.qwen_image.vlm_staging import stage_for_vllm
from diptych.types import ChatMessage, ImagePart, SamplingOptions, TextPart
from tests.engine.ar_helpers import ar_config, collect, marked_image

compat.install()

from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration  # noqa: E402  (after compat.install)

# The engine fixture lives in the session's event loop (vLLM's output handler is bound to it).
SESSION_LOOP = pytest.mark.asyncio(loop_scope="session")

GREEDY = SamplingOptions(max_tokens=12, temperature=0.0)
MAX_MODEL_LEN = 1024


@pytest.fixture(scope="module")
def staged(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tiny_qwen_image")
    write_tiny_vlm(root, seed=0)
    return stage_for_vllm(root, tmp_path_factory.mktemp("staging"))


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def engine(staged: Path) -> AsyncIterator[AREngine]:
    ar = AREngine(staged, ar_config(staged, MAX_MODEL_LEN))
    await ar.start()
    yield ar
    await ar.shutdown()


@pytest.fixture(scope="module")
def processor(staged: Path) -> Any:
    return AutoProcessor.from_pretrained(staged)


@pytest.fixture(scope="module")
def reference(staged: Path) -> Any:
    return Qwen2_5_VLForConditionalGeneration.from_pretrained(staged).eval()


def _chat(*parts: TextPart | ImagePart) -> tuple[ChatMessage, ...]:
    return (ChatMessage("user", parts),)


def _transformers_greedy(reference: Any, processor: Any, prompt: ChatPrompt, max_new_tokens: int) -> tuple[list[int], int]:
    inputs = processor(text=[prompt.text], images=list(prompt.images) or None, return_tensors="pt")
    with torch.no_grad():
        out = reference.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    return out[0, inputs["input_ids"].shape[1] :].tolist(), inputs["input_ids"].shape[1]


@SESSION_LOOP
async def test_greedy_tokens_equal_transformers(engine: AREngine, processor: Any, reference: Any) -> None:
    chats = [
        _chat(ImagePart(marked_image((200, 30, 30))), TextPart("What is in this picture?")),
        _chat(ImagePart(marked_image((30, 30, 200))), TextPart("What is in this picture?")),
        _chat(TextPart("Compare "), ImagePart(marked_image((10, 200, 10), (90, 60))), TextPart(" with "),
              ImagePart(marked_image((250, 250, 0)))),
        _chat(TextPart("Describe a red circle.")),
    ]
    results = []
    for index, messages in enumerate(chats):
        prompt = render_chat(processor, messages)
        tokens, text, finished = await collect(engine.generate(prompt, GREEDY, f"greedy-{index}"))
        expected, prompt_len = _transformers_greedy(reference, processor, prompt, GREEDY.max_tokens)
        assert tokens == expected, f"chat {index}"
        # vLLM's incremental detokenizer drops a trailing incomplete UTF-8 sequence that a
        # full decode renders as U+FFFD; random tiny models end on one now and then.
        full = processor.tokenizer.decode(expected, skip_special_tokens=True)
        assert full.startswith(text) and set(full[len(text) :]) <= {"\ufffd"}
        assert finished.prompt_tokens == prompt_len == count_tokens(processor, prompt)
        assert finished.completion_tokens == len(expected)
        assert finished.finish_reasons == (("length" if len(expected) == GREEDY.max_tokens else "stop"),)
        results.append(tokens)
    # Guard against a degenerate model: the answer must depend on the image.
    assert results[0] != results[1]


@SESSION_LOOP
async def test_concurrent_requests_all_complete(engine: AREngine, processor: Any) -> None:
    prompts = [
        render_chat(processor, _chat(ImagePart(marked_image((i * 40 % 256, 90, 200 - i * 20))), TextPart(f"Image {i}?")))
        for i in range(6)
    ]
    solo = [await collect(engine.generate(p, GREEDY, f"solo-{i}")) for i, p in enumerate(prompts)]
    sampled = SamplingOptions(max_tokens=16, temperature=0.9, top_p=0.9, top_k=50, seed=7)
    together = await asyncio.gather(
        *(collect(engine.generate(p, GREEDY, f"together-{i}")) for i, p in enumerate(prompts)),
        *(collect(engine.generate(prompts[0], sampled, f"sampled-{i}")) for i in range(2)),
    )
    # Batched greedy equals alone; one seed gives one sample, whatever else is in the batch.
    assert [tokens for tokens, _, _ in together[:6]] == [tokens for tokens, _, _ in solo]
    assert together[6][0] == together[7][0]
    assert together[6][0] != solo[0][0]
    assert engine.num_unfinished_requests() == 0


@SESSION_LOOP
async def test_stop_strings_and_max_tokens(engine: AREngine, processor: Any) -> None:
    prompt = render_chat(processor, _chat(ImagePart(marked_image((200, 30, 30))), TextPart("What is in this picture?")))
    tokens, text, finished = await collect(engine.generate(prompt, SamplingOptions(max_tokens=5, temperature=0.0), "m"))
    assert (len(tokens), finished.completion_tokens, finished.finish_reasons) == (5, 5, ("length",))
    full_tokens, full_text, _ = await collect(engine.generate(prompt, GREEDY, "full"))
    stop = full_text[len(full_text) // 2 :][:3]
    assert stop.strip(), "need a printable stop string"
    _, stopped_text, stopped = await collect(
        engine.generate(prompt, SamplingOptions(max_tokens=12, temperature=0.0, stop=(stop,)), "stop")
    )
    assert stopped.finish_reasons == ("stop",)
    assert stopped_text == full_text[: full_text.index(stop)]


@SESSION_LOOP
async def test_closing_a_stream_aborts_the_request(engine: AREngine, processor: Any) -> None:
    prompt = render_chat(processor, _chat(ImagePart(marked_image((30, 200, 30))), TextPart("Tell me everything.")))
    long = SamplingOptions(max_tokens=MAX_MODEL_LEN // 2, temperature=0.0)
    stream = engine.generate(prompt, long, "to-abort")
    received = 0
    async for event in stream:
        assert isinstance(event, ARTextDelta), "finished before the abort: the test would prove nothing"
        received += 1
        if received == 3:
            break
    await stream.aclose()
    assert engine.num_unfinished_requests() == 0
    # The engine core must have dropped it too: after a short request finishes, its
    # scheduler reports nothing running or waiting (the long one had ~500 tokens to go).
    await collect(engine.generate(prompt, SamplingOptions(max_tokens=2, temperature=0.0), "after-abort"))
    load = engine.scheduler_load
    assert (load.running, load.waiting) == (0, 0)
    assert engine.is_healthy()


@SESSION_LOOP
async def test_prompt_longer_than_the_model_is_invalid(engine: AREngine, processor: Any) -> None:
    prompt = render_chat(processor, _chat(TextPart("red " * MAX_MODEL_LEN)))
    with pytest.raises(InvalidRequestError):
        await collect(engine.generate(prompt, GREEDY, "too-long"))
    assert engine.is_healthy()


@SESSION_LOOP
async def test_unstarted_engine_is_unavailable(staged: Path) -> None:
    ar = AREngine(staged, ar_config(staged, MAX_MODEL_LEN))
    assert ar.health_state == "starting" and not ar.is_healthy()
    with pytest.raises(EngineUnavailableError):
        await collect(ar.generate(ChatPrompt(text="hi", images=()), GREEDY, "nope"))


@pytest.mark.slow  # starts a second engine, kills its core and waits for the rebuild (~90 s)
@SESSION_LOOP
async def test_a_dead_engine_core_fails_its_requests_and_is_rebuilt(staged: Path, processor: Any) -> None:
    # An engine of its own (eager: a quicker start) whose core process this test kills.
    me = psutil.Process()
    before = {p.pid for p in me.children(recursive=True)}

    def cores() -> list[psutil.Process]:
        return [p for p in me.children(recursive=True) if p.pid not in before and "EngineCore" in p.name()]

    ar = AREngine(staged, ar_config(staged, MAX_MODEL_LEN), enforce_eager=True)
    await ar.start()
    try:
        (core,) = cores()
        assert _sigint_blocked_in(core.pid)  # a terminal's Ctrl+C is the gateway's to handle
        prompt = render_chat(processor, _chat(TextPart("Still there?")))
        in_flight = ar.generate(prompt, SamplingOptions(max_tokens=MAX_MODEL_LEN // 2, temperature=0.0), "in-flight")
        assert isinstance(await in_flight.__anext__(), ARTextDelta)
        core.kill()
        with pytest.raises(EngineUnavailableError):
            # A stream open at the death fails at once; it does not hang.
            await asyncio.wait_for(collect(in_flight), 5)
        assert ar.health_state == "restarting" and not ar.is_healthy()
        with pytest.raises(EngineUnavailableError):
            await collect(ar.generate(prompt, GREEDY, "meanwhile"))
        for _ in range(3000):
            if ar.health_state == "ok":
                break
            await asyncio.sleep(0.1)
        assert ar.health_state == "ok" and ar.restarts == 1
        (new_core,) = cores()
        assert new_core.pid != core.pid
        tokens, _, finished = await collect(ar.generate(prompt, GREEDY, "after"))
        assert finished.completion_tokens == len(tokens) > 0
    finally:
        await ar.shutdown()
    assert ar.health_state == "stopping"


def _sigint_blocked_in(pid: int) -> bool:
    status = Path(f"/proc/{pid}/status").read_text()
    blocked = int(next(line for line in status.splitlines() if line.startswith("SigBlk:")).split()[1], 16)
    return bool(blocked & (1 << 1))  # SIGINT is signal 2


def test_vllm_errors_map_to_typed_errors() -> None:
    from vllm.exceptions import QueueOverflowError, VLLMValidationError
    from vllm.v1.engine.exceptions import EngineDeadError, EngineGenerateError

    from diptych.engine.ar_engine import _map_error
    from diptych.engine.errors import EngineError, QueueFullError

    assert isinstance(_map_error(EngineDeadError()), EngineUnavailableError)
    assert isinstance(_map_error(VLLMValidationError("too long")), InvalidRequestError)
    assert isinstance(_map_error(QueueOverflowError()), QueueFullError)
    wrapped = EngineGenerateError()
    wrapped.__cause__ = ValueError("bad image")
    assert isinstance(_map_error(wrapped), InvalidRequestError)
    wrapped.__cause__ = RuntimeError("kernel")
    assert type(_map_error(wrapped)) is EngineError
    other = KeyError("x")
    assert _map_error(other) is other


@pytest.mark.slow  # two more engines of two ranks each (~25 s per start)
@SESSION_LOOP
@pytest.mark.parametrize("parallel", [{"tensor_parallel_size": 2}, {"data_parallel_size": 2}], ids=["tp2", "dp2"])
async def test_two_ranks_on_two_cores_decode_what_one_does(engine: AREngine, staged: Path, processor: Any,
                                                           parallel: dict[str, int],
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    import dataclasses

    from diptych.engine.parallel import CPU_BIND_VARIABLE

    # The engine splits the cores itself; the variable it sets goes with the test (set first so
    # that monkeypatch records it, then removed).
    monkeypatch.setenv(CPU_BIND_VARIABLE, "")
    monkeypatch.delenv(CPU_BIND_VARIABLE)
    prompt = render_chat(processor, _chat(ImagePart(marked_image((20, 160, 90))), TextPart("What is in this picture?")))
    alone, _, _ = await collect(engine.generate(prompt, GREEDY, "one-rank"))
    ar = AREngine(staged, dataclasses.replace(ar_config(staged, MAX_MODEL_LEN), **parallel), enforce_eager=True)
    await ar.start()
    try:
        ranked, _, _ = await collect(ar.generate(prompt, GREEDY, "two-ranks"))
    finally:
        await ar.shutdown()
    assert ranked == alone
