"""Janus-Pro on vLLM (our out-of-tree model and CFG pairing) against transformers, on the tiny checkpoint.

One engine per module. Every expected token sequence is computed here by transformers on
the same inputs.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import torch
from PIL import Image

from diptych import compat
from diptych.engine.ar_engine import AREngine, ARTextDelta
from diptych.engine.ar_images import generate_codes
from diptych.models.janus_pro import chat_format as cf
from diptych.models.janus_pro.adapter import JanusProAdapter
from diptych.types import (
    ChatFinished,
    ChatMessage,
    EngineConfig,
    ImagePart,
    ImageRequest,
    Limits,
    SamplingOptions,
    TextPart,
)

compat.install()

SESSION_LOOP = pytest.mark.asyncio(loop_scope="session")
MAX_MODEL_LEN = 512


def _config(model_dir: Path) -> EngineConfig:
    limits = Limits(
        max_image_side=512, max_n=4, max_steps=10, max_prompt_tokens=256, max_output_tokens=256,
        max_images_per_request=2, queue_depth=32, request_timeout_s=120.0,
    )
    return EngineConfig(
        model_dir=model_dir, served_name="tiny-janus", device="cpu", dtype="auto", cache_dir=model_dir, kv_cache_gib=0.0625,
        max_model_len=MAX_MODEL_LEN, max_num_seqs=32, ar_startup_timeout_s=900.0, limits=limits,
    )


@pytest.fixture(scope="module")
def adapter(tiny_janus_dir: Path) -> JanusProAdapter:
    return JanusProAdapter(tiny_janus_dir)


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def engine(tiny_janus_dir: Path, adapter: JanusProAdapter) -> AsyncIterator[AREngine]:
    stage = adapter.ar_image_stage()
    ar = AREngine(tiny_janus_dir, _config(tiny_janus_dir), enforce_eager=True,
                  options=stage.engine_options(MAX_MODEL_LEN))
    await ar.start()
    yield ar
    await ar.shutdown()


@pytest.fixture(scope="module")
def reference(tiny_janus_dir: Path) -> Any:
    from transformers import JanusForConditionalGeneration

    return JanusForConditionalGeneration.from_pretrained(tiny_janus_dir).eval()


@pytest.fixture(scope="module")
def processor(tiny_janus_dir: Path) -> Any:
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(tiny_janus_dir)


def _image(colour: tuple[int, int, int]) -> Image.Image:
    image = Image.new("RGB", (80, 60), colour)
    image.paste((255 - colour[0], colour[1], 255 - colour[2]), (8, 8, 40, 30))
    return image


def _request(prompt: str, index: int = 0, **fields: Any) -> ImageRequest:
    base = {"width": 64, "height": 64, "guidance_scale": 4.0, "temperature": 0.0, "top_k": 1, "seed": 0}
    return ImageRequest(request_id=f"img-{index}-{prompt[:8]}", prompt=prompt, **{**base, **fields})


def _reference_codes(reference: Any, processor: Any, prompt: str, guidance_scale: float) -> list[int]:
    inputs = processor(text=[cf.generation_prompt(prompt)], generation_mode="image", return_tensors="pt")
    with torch.no_grad():
        out = reference.generate(**inputs, generation_mode="image", do_sample=False, guidance_scale=guidance_scale)
    return out[0].tolist()


async def _chat_tokens(engine: AREngine, adapter: JanusProAdapter, messages: Any, rid: str, n: int) -> list[int]:
    tokens: list[int] = []
    async for event in engine.generate(adapter.render_chat(messages), SamplingOptions(max_tokens=n, temperature=0.0), rid):
        if isinstance(event, ARTextDelta):
            tokens.extend(event.token_ids)
        else:
            assert isinstance(event, ChatFinished)
    return tokens


@SESSION_LOOP
async def test_greedy_vqa_equals_transformers(engine: AREngine, adapter: JanusProAdapter, reference: Any,
                                              processor: Any) -> None:
    answers = []
    for index, colour in enumerate(((200, 30, 30), (30, 30, 200))):
        messages = (ChatMessage("user", (ImagePart(_image(colour)), TextPart("What is in this picture?"))),)
        tokens = await _chat_tokens(engine, adapter, messages, f"vqa-{index}", 10)
        prompt = adapter.render_chat(messages)
        inputs = processor(text=[prompt.text], images=list(prompt.images), return_tensors="pt")
        with torch.no_grad():
            out = reference.generate(**inputs, max_new_tokens=10, do_sample=False)
        expected = out[0, inputs["input_ids"].shape[1] :].tolist()
        assert tokens == expected
        assert adapter.count_prompt_tokens(prompt) == inputs["input_ids"].shape[1]
        answers.append(tokens)
    assert answers[0] != answers[1], "the answer ignores the image: the equality proves nothing"


@SESSION_LOOP
async def test_guided_greedy_image_tokens_equal_transformers_alone_and_batched(
    engine: AREngine, adapter: JanusProAdapter, reference: Any, processor: Any
) -> None:
    stage = adapter.ar_image_stage()
    target = _request("a red cat on a mat")
    (alone,) = await generate_codes(engine, stage, target)
    expected = _reference_codes(reference, processor, target.prompt, target.guidance_scale)
    assert list(alone) == expected
    unguided = _reference_codes(reference, processor, target.prompt, 1.5)
    assert unguided != expected, "guidance does not change the tokens: the test proves nothing"

    # Seven others in flight: guided images of other prompts and scales, and chats.
    others = [
        _request("a blue square", 1, guidance_scale=2.0),
        _request("a green triangle in the sun", 2, guidance_scale=7.5),
        _request("a house with a garden", 3, guidance_scale=3.0),
        _request("a red cat on a mat", 4, guidance_scale=1.5),
    ]
    chats = [
        (ChatMessage("user", (ImagePart(_image((i * 60, 90, 30))), TextPart(f"Describe image {i}."))),)
        for i in range(3)
    ]
    results = await asyncio.gather(
        generate_codes(engine, stage, dataclasses.replace(target, request_id="batched-target")),
        *(generate_codes(engine, stage, r) for r in others),
        *(_chat_tokens(engine, adapter, m, f"chat-{i}", 24) for i, m in enumerate(chats)),
    )
    assert list(results[0][0]) == expected
    for request, (codes,) in zip(others, results[1:5], strict=True):
        assert list(codes) == _reference_codes(reference, processor, request.prompt, request.guidance_scale)
    assert engine.num_unfinished_requests() == 0


@SESSION_LOOP
async def test_sampling_options_and_seed(engine: AREngine, adapter: JanusProAdapter) -> None:
    stage = adapter.ar_image_stage()
    sampled = _request("a blue square", temperature=1.0, top_k=50, top_p=0.9, seed=11)
    first, second, other_seed = await asyncio.gather(
        generate_codes(engine, stage, sampled),
        generate_codes(engine, stage, dataclasses.replace(sampled, request_id="again")),
        generate_codes(engine, stage, dataclasses.replace(sampled, request_id="other", seed=12)),
    )
    assert first == second  # one seed, one image, whatever it is batched with
    assert first != other_seed
    greedy = await generate_codes(engine, stage, dataclasses.replace(sampled, request_id="g", temperature=0.0))
    assert first != greedy
    # n images: n pairs, image i seeded with seed + i.
    two = await generate_codes(engine, stage, dataclasses.replace(sampled, request_id="n2", n=2))
    assert two[0] == first[0] and two[1] == other_seed[0]


@SESSION_LOOP
async def test_a_pair_that_loses_its_partner_never_makes_an_image(engine: AREngine, adapter: JanusProAdapter) -> None:
    """The unconditional half ends after 3 tokens (as if preempted): the conditional half is stopped at once."""
    stage = adapter.ar_image_stage()
    request = _request("a pair that falls apart")
    (job,) = stage.plan(request)
    (expected,) = await generate_codes(engine, stage, request)
    cond, uncond = job.sequences
    short = {**uncond.sampling, "max_tokens": 3}
    tokens, _ = await asyncio.gather(
        engine.generate_tokens(cond.prompt_token_ids, cond.sampling, "split-cond"),
        engine.generate_tokens(uncond.prompt_token_ids, short, "split-uncond"),
    )
    v = stage.spec.text_vocab_size
    assert [t - v for t in tokens[:3]] == list(expected[:3])  # guided while the pair was whole
    assert tokens[3:] == [stage.spec.eos_id]  # then stopped, not continued unguided
    assert stage.codes(tokens) is None
