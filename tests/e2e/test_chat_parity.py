"""vLLM's and OpenAI's chat sampling fields, honoured through the real server (issue "Chat parity").

Each field is sent as vLLM's OpenAI server takes it, and its effect is observed in the result.
The tiny checkpoint's VLM is random: its greedy answers end early or run on, so effects are
asserted on token counts and on the text's relation to the same request without the field.
"""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from diptych.bench.server_process import ServerProcess
from tests.e2e.test_openai_sdk import MODEL, png_data_url, vqa_messages


def _chat(server: ServerProcess, **fields: Any) -> httpx.Response:
    body = {"model": MODEL, "messages": vqa_messages(), "temperature": 0, **fields}
    return httpx.post(f"{server.base_url}/v1/chat/completions", json=body, timeout=120)


def _completion_tokens(response: httpx.Response) -> int:
    assert response.status_code == 200, response.text
    return int(response.json()["usage"]["completion_tokens"])


def test_ignore_eos_gives_exactly_max_tokens(server: ServerProcess) -> None:
    natural = _completion_tokens(_chat(server, max_tokens=40))
    assert _completion_tokens(_chat(server, max_tokens=40, ignore_eos=True)) == 40
    assert natural <= 40
    response = _chat(server, max_tokens=40, ignore_eos=True)
    assert response.json()["choices"][0]["finish_reason"] == "length"


WORD = " square"


@pytest.fixture(scope="module")
def token_of(edit_checkpoint: Path) -> Callable[[str], int]:
    """The id of a text that is one token in the served checkpoint's vocabulary."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(edit_checkpoint / "tokenizer")

    def one(text: str) -> int:
        (token,) = tokenizer.encode(text, add_special_tokens=False)
        return int(token)

    return one


@pytest.fixture(scope="module")
def forced(token_of: Callable[[str], int]) -> int:
    """The token of WORD: with a bias of 100, greedy decoding picks it every time."""
    return token_of(WORD)


def test_logit_bias_forces_a_token(server: ServerProcess, forced: int) -> None:
    response = _chat(server, max_tokens=8, ignore_eos=True, logit_bias={str(forced): 100})
    assert _completion_tokens(response) == 8
    assert response.json()["choices"][0]["message"]["content"] == WORD * 8


def test_stop_token_ids_end_the_output(server: ServerProcess, forced: int) -> None:
    response = _chat(server, max_tokens=8, logit_bias={str(forced): 100}, stop_token_ids=[forced])
    assert _completion_tokens(response) <= 1
    choice = response.json()["choices"][0]
    assert choice["finish_reason"] == "stop" and choice["message"]["content"] == ""


def test_min_tokens_gives_at_least_that_many(server: ServerProcess, forced: int) -> None:
    # The forced token is also a stop token: the output ends at once, unless min_tokens holds it off.
    stopping = {"max_tokens": 16, "logit_bias": {str(forced): 100}, "stop_token_ids": [forced]}
    assert _completion_tokens(_chat(server, **stopping)) <= 1
    assert _completion_tokens(_chat(server, **stopping, min_tokens=6)) >= 6


def test_penalties_and_bias_change_the_greedy_text(server: ServerProcess) -> None:
    base = _chat(server, max_tokens=24, ignore_eos=True)
    assert base.status_code == 200
    text = base.json()["choices"][0]["message"]["content"]
    changed = []
    for fields in ({"repetition_penalty": 1.9}, {"frequency_penalty": 2.0}, {"presence_penalty": 2.0}):
        response = _chat(server, max_tokens=24, ignore_eos=True, **fields)
        assert response.status_code == 200, (fields, response.text)
        changed.append(response.json()["choices"][0]["message"]["content"] != text)
    assert any(changed)  # a random model repeats itself under greedy decoding; a penalty breaks that


def test_min_p_and_seed_sample_reproducibly(server: ServerProcess) -> None:
    first = _chat(server, max_tokens=16, temperature=1.0, seed=3, min_p=0.05)
    second = _chat(server, max_tokens=16, temperature=1.0, seed=3, min_p=0.05)
    assert first.status_code == second.status_code == 200
    assert first.json()["choices"][0]["message"] == second.json()["choices"][0]["message"]


def test_n_gives_choices_sampled_as_vllm_seeds_them(server: ServerProcess) -> None:
    sampled = {"max_tokens": 8, "ignore_eos": True, "temperature": 1.0, "seed": 11}
    response = _chat(server, n=2, **sampled)
    assert response.status_code == 200, response.text
    choices = response.json()["choices"]
    assert [c["index"] for c in choices] == [0, 1]
    assert all(c["finish_reason"] == "length" for c in choices)
    assert response.json()["usage"]["completion_tokens"] == 16  # both choices
    # vLLM seeds choice i with seed + i: each equals a lone request with that seed.
    for index, choice in enumerate(choices):
        alone = _chat(server, **{**sampled, "seed": 11 + index}).json()["choices"][0]
        assert choice["message"]["content"] == alone["message"]["content"]
    assert choices[0]["message"]["content"] != choices[1]["message"]["content"]

    body = {"model": MODEL, "messages": vqa_messages(), "n": 2, "stream": True, **sampled}
    with httpx.stream("POST", f"{server.base_url}/v1/chat/completions", json=body, timeout=120) as streamed:
        assert streamed.status_code == 200
        chunks = [json.loads(line[6:]) for line in streamed.iter_lines()
                  if line.startswith("data: ") and line != "data: [DONE]"]
    texts = ["", ""]
    for chunk in chunks:
        for choice in chunk["choices"]:
            texts[choice["index"]] += choice["delta"].get("content") or ""
    assert texts == [c["message"]["content"] for c in choices]


COLOUR_SCHEMA = {
    "type": "object",
    "properties": {"colour": {"type": "string", "enum": ["red", "green", "blue"]}, "count": {"type": "integer"}},
    "required": ["colour", "count"],
    "additionalProperties": False,
}


def test_json_schema_output_is_valid_under_the_schema(server: ServerProcess) -> None:
    import jsonschema

    response_format = {"type": "json_schema", "json_schema": {"name": "picture", "schema": COLOUR_SCHEMA}}
    for seed in (0, 1):
        response = _chat(server, max_tokens=64, temperature=1.0, seed=seed, response_format=response_format)
        choice = response.json()["choices"][0]
        assert response.status_code == 200 and choice["finish_reason"] == "stop", response.text
        jsonschema.validate(json.loads(choice["message"]["content"]), COLOUR_SCHEMA)


def test_json_object_output_parses_as_json(server: ServerProcess, token_of: Callable[[str], int]) -> None:
    # The random model writes no JSON by itself, and within the grammar it would fill a string
    # forever: a bias on "}" closes the object as soon as the grammar allows.
    closing = {str(token_of("}")): 100}
    free = _chat(server, max_tokens=24, logit_bias=closing).json()["choices"][0]["message"]["content"]
    with pytest.raises(ValueError):
        json.loads(free)
    response = _chat(server, max_tokens=64, logit_bias=closing, response_format={"type": "json_object"})
    assert response.status_code == 200, response.text
    content = response.json()["choices"][0]["message"]["content"]
    assert isinstance(json.loads(content), dict), content


def test_vllms_structured_outputs_constrain_the_text(server: ServerProcess) -> None:
    choices = ["red circle", "blue square", "green triangle"]
    for seed in (0, 1):
        response = _chat(server, max_tokens=16, temperature=1.0, seed=seed, structured_outputs={"choice": choices})
        assert response.status_code == 200, response.text
        assert response.json()["choices"][0]["message"]["content"] in choices
    response = _chat(server, max_tokens=16, structured_outputs={"regex": "(yes|no), [0-9]{2}"})
    assert re.fullmatch("(yes|no), [0-9]{2}", response.json()["choices"][0]["message"]["content"]), response.text


def test_allowed_token_ids_and_bad_words_restrict_the_vocabulary(server: ServerProcess, forced: int,
                                                                  edit_checkpoint: Path) -> None:
    only = _chat(server, max_tokens=6, ignore_eos=True, allowed_token_ids=[forced])
    assert only.json()["choices"][0]["message"]["content"] == WORD * 6, only.text
    # vLLM bans a word as it tokenises alone (and with a leading space only when that has as
    # many tokens), so the banned word here is one token either way.
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(edit_checkpoint / "tokenizer")
    word = next(w for w in ("the", "and", "is", "of", "a") if len(tokenizer.encode(w, add_special_tokens=False)) == 1)
    (token,) = tokenizer.encode(word, add_special_tokens=False)
    biased = {"max_tokens": 6, "ignore_eos": True, "logit_bias": {str(token): 100}, "logprobs": True}
    assert _chat(server, **biased).json()["choices"][0]["message"]["content"] == word * 6
    banned = _chat(server, **biased, bad_words=[word])
    assert banned.status_code == 200, banned.text
    assert word not in [t["token"] for t in banned.json()["choices"][0]["logprobs"]["content"]]


def test_fields_without_effect_here_are_accepted(server: ServerProcess) -> None:
    response = _chat(server, max_tokens=4, user="u-1", store=False, metadata={"team": "a"}, service_tier="auto",
                     modalities=["text"],
                     skip_special_tokens=True, include_stop_str_in_output=False)
    assert response.status_code == 200, response.text


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"min_tokens": 9, "max_tokens": 4}, "min_tokens"),
        ({"repetition_penalty": 0}, "repetition_penalty"),
        ({"min_p": 1.5}, "min_p"),
        ({"ignore_eos": "yes"}, "ignore_eos"),
        ({"stop_token_ids": [-1]}, "stop_token_ids.0"),
        ({"logit_bias": {"abc": 1}}, "logit_bias.abc"),
        ({"logit_bias": {"5": 101}}, "logit_bias.5"),
        ({"n": 5}, "n"),  # past --max-n (4)
        ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
        ({"response_format": {"type": "json_schema"}}, "response_format.json_schema"),
        ({"response_format": {"type": "yaml"}}, "response_format.type"),
        # Well-formed JSON, but no schema vLLM's backend can compile.
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nonsense"}}}},
         None),
    ],
)
def test_out_of_range_sampling_fields_are_400s(server: ServerProcess, fields: dict[str, Any], param: str | None) -> None:
    response = _chat(server, **fields)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param


def test_vllms_own_bench_client_runs_against_the_server(server: ServerProcess) -> None:
    """vLLM's request function of ``vllm bench serve --backend openai-chat``, unmodified, with an image."""
    import aiohttp
    from vllm.benchmarks.lib.endpoint_request_func import RequestFuncInput, async_request_openai_chat_completions

    async def run() -> list[Any]:
        inputs = [
            RequestFuncInput(
                prompt=f"What is in the picture? {i}",
                api_url=f"{server.base_url}/v1/chat/completions",
                prompt_len=8,
                output_len=12,
                model=MODEL,
                multi_modal_content={"type": "image_url", "image_url": {"url": png_data_url((40 * i, 90, 200))}},
                ignore_eos=True,
            )
            for i in range(4)
        ]
        async with aiohttp.ClientSession() as session:
            return await asyncio.gather(*(async_request_openai_chat_completions(i, session) for i in inputs))

    outputs = asyncio.run(run())
    for output in outputs:
        assert output.success, output.error
        assert output.output_tokens == 12  # ignore_eos: exactly output_len


def test_continuous_usage_stats_count_on_every_chunk(server: ServerProcess) -> None:
    body = {"model": MODEL, "messages": vqa_messages(), "temperature": 0, "max_tokens": 6, "ignore_eos": True,
            "stream": True, "stream_options": {"include_usage": True, "continuous_usage_stats": True}}
    with httpx.stream("POST", f"{server.base_url}/v1/chat/completions", json=body, timeout=120) as response:
        assert response.status_code == 200
        chunks = [json.loads(line[6:]) for line in response.iter_lines()
                  if line.startswith("data: ") and line != "data: [DONE]"]
    text_chunks = [c for c in chunks if c["choices"] and c["choices"][0]["delta"].get("content")]
    assert text_chunks and all("usage" in c for c in text_chunks)
    counts = [c["usage"]["completion_tokens"] for c in text_chunks]
    assert counts == sorted(counts) and counts[-1] <= 6
    prompt = {c["usage"]["prompt_tokens"] for c in text_chunks}
    final = chunks[-1]["usage"]
    assert prompt == {final["prompt_tokens"]} and final["completion_tokens"] == 6


def test_logprobs_come_back_in_openais_shape(server: ServerProcess) -> None:
    import openai

    client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0, timeout=120)
    completion = client.chat.completions.create(
        model=MODEL, messages=vqa_messages(), max_tokens=6, temperature=0, logprobs=True, top_logprobs=3,  # type: ignore[arg-type]
        extra_body={"ignore_eos": True},
    )
    choice = completion.choices[0]
    assert choice.logprobs is not None and choice.logprobs.content is not None
    tokens = choice.logprobs.content
    assert len(tokens) == 6
    # Special tokens are listed (as vLLM lists them) but left out of the text (skip_special_tokens).
    text = "".join(t.token for t in tokens if not (t.token.startswith("<|") and t.token.endswith("|>")))
    assert text == choice.message.content
    for token in tokens:
        assert token.logprob <= 0 and token.bytes == list(token.token.encode())
        assert len(token.top_logprobs) == 3
        alternatives = [t.logprob for t in token.top_logprobs]
        assert alternatives == sorted(alternatives, reverse=True)
        assert token.logprob == pytest.approx(alternatives[0])  # greedy: the most likely token was taken

    stream = client.chat.completions.create(
        model=MODEL, messages=vqa_messages(), max_tokens=6, temperature=0, logprobs=True, top_logprobs=3,  # type: ignore[arg-type]
        stream=True, extra_body={"ignore_eos": True},
    )
    streamed = [t for chunk in stream if chunk.choices and chunk.choices[0].logprobs
                for t in chunk.choices[0].logprobs.content or []]
    assert [t.token for t in streamed] == [t.token for t in tokens]
    assert [t.logprob for t in streamed] == pytest.approx([t.logprob for t in tokens])
