"""Diptych's vLLM attention backend: paged KV, mask metadata, selection, and vLLM end to end.

Unit tests drive the metadata builder and the layer implementation directly on a paged
cache and compare with a brute-force float64 mask built from positions. The end-to-end
tests serve a tiny random Gemma3 (image tokens bidirectional in transformers) with vLLM
on CPU twice, with this backend and with vLLM's stock CPU attention, each in its own
subprocess (vLLM spawns its engine core; a fresh process per backend), both at once.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

vllm = pytest.importorskip("vllm")

from vllm.v1.attention.backend import CommonAttentionMetadata  # noqa: E402
from vllm.v1.attention.backends.registry import AttentionBackendEnum  # noqa: E402

from diptych.kernels import vllm_select  # noqa: E402
from diptych.kernels.vllm_backend import (  # noqa: E402
    MixedMaskAttentionBackend,
    MixedMaskAttentionImpl,
    MixedMaskMetadataBuilder,
    gather_kv,
    image_spans,
    write_kv,
)
from tests.conftest import TinyCheckpoint  # noqa: E402

HEADS, KV_HEADS, HEAD_DIM, BLOCK_SIZE, NUM_BLOCKS = 4, 2, 16, 4, 40


# ---------------------------------------------------------------- metadata and cache


def test_image_spans_are_half_open_and_clipped_to_the_step() -> None:
    # vLLM's ranges are inclusive; a range wholly past this step's keys belongs to a later chunk.
    assert image_spans([(9, 12), (2, 5)], kv_len=20) == ((2, 6), (9, 13))
    assert image_spans([(2, 5), (30, 40)], kv_len=20) == ((2, 6),)
    assert image_spans([], kv_len=3) == ()


def test_image_split_by_a_chunk_is_an_error_not_a_causal_image() -> None:
    with pytest.raises(ValueError, match="disable_chunked_mm_input"):
        image_spans([(10, 25)], kv_len=20)


def test_kv_cache_round_trip_skips_padding_slots() -> None:
    cache = torch.zeros(NUM_BLOCKS, KV_HEADS, BLOCK_SIZE, 2 * HEAD_DIM)
    key, value = torch.randn(5, KV_HEADS, HEAD_DIM), torch.randn(5, KV_HEADS, HEAD_DIM)
    slots = torch.tensor([13, 2, -1, 37, 38])
    write_kv(cache, key, value, slots)
    keep = slots >= 0
    k, v = gather_kv(cache, slots[keep] // BLOCK_SIZE, slots[keep] % BLOCK_SIZE)
    assert torch.equal(k, key[keep]) and torch.equal(v, value[keep])
    assert int((cache != 0).any(dim=(1, 3)).sum()) == 4  # the padding token wrote nothing


# ---------------------------------------------------------------- one step against brute force


def _brute_force(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    kv_len: int,
    spans: tuple[tuple[int, int], ...],
    window: int | None,
    scale: float,
) -> torch.Tensor:
    """float64 attention of the last q rows of one sequence, mask from positions alone."""
    q_len = q.shape[0]
    mask = torch.zeros(q_len, kv_len, dtype=torch.bool)
    for row in range(q_len):
        p = kv_len - q_len + row
        for j in range(kv_len):
            same_image = any(s <= p < e and s <= j < e for s, e in spans)
            mask[row, j] = (j <= p or same_image) and (window is None or p - j < window)
    group = q.shape[1] // k.shape[1]
    kk = k.double().repeat_interleave(group, dim=1).transpose(0, 1)
    vv = v.double().repeat_interleave(group, dim=1).transpose(0, 1)
    scores = (q.double().transpose(0, 1) @ kk.transpose(1, 2)) * scale
    scores = scores.masked_fill(~mask, float("-inf"))
    return (scores.softmax(-1) @ vv).transpose(0, 1)


# (kv_len, q_len, vLLM's inclusive image ranges): a prefill with an image, a decode step
# after an image, a prefill over a cached prefix that ends inside an image (its rows see
# the whole image, cached keys included), and a text-only prefill.
_BATCH = ((20, 20, [(3, 10)]), (13, 1, [(2, 5)]), (18, 6, [(8, 14)]), (7, 7, []))


def _run_step(window: int | None, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One step through builder and impl on a paged cache: (output, brute force, brute force all causal)."""
    gen = torch.Generator().manual_seed(seed)
    cache = torch.zeros(NUM_BLOCKS, KV_HEADS, BLOCK_SIZE, 2 * HEAD_DIM)
    permutation = torch.randperm(NUM_BLOCKS, generator=gen)  # blocks scattered over the cache
    blocks_per_seq = NUM_BLOCKS // len(_BATCH)
    block_table = permutation.view(len(_BATCH), blocks_per_seq).int()
    impl = MixedMaskAttentionImpl(HEADS, HEAD_DIM, scale=0.3, num_kv_heads=KV_HEADS, sliding_window=window)

    queries, new_keys, new_values, new_slots, expected, causal = [], [], [], [], [], []
    for row, (kv_len, q_len, ranges) in enumerate(_BATCH):
        k = torch.randn(kv_len, KV_HEADS, HEAD_DIM, generator=gen)
        v = torch.rand(kv_len, KV_HEADS, HEAD_DIM, generator=gen) * 2 - 1
        q = torch.randn(q_len, HEADS, HEAD_DIM, generator=gen)
        positions = torch.arange(kv_len)
        slots = block_table[row, positions // BLOCK_SIZE].long() * BLOCK_SIZE + positions % BLOCK_SIZE
        cached = kv_len - q_len
        write_kv(cache, k[:cached], v[:cached], slots[:cached])  # written by earlier steps
        queries.append(q)
        new_keys.append(k[cached:])
        new_values.append(v[cached:])
        new_slots.append(slots[cached:])
        spans = tuple((s, e + 1) for s, e in ranges)
        expected.append(_brute_force(q, k, v, kv_len, spans, window, 0.3))
        causal.append(_brute_force(q, k, v, kv_len, (), window, 0.3))

    padding = 2  # vLLM may pad the token dimension; padding rows have slot -1
    query = torch.cat([*queries, torch.zeros(padding, HEADS, HEAD_DIM)])
    key = torch.cat([*new_keys, torch.zeros(padding, KV_HEADS, HEAD_DIM)])
    value = torch.cat([*new_values, torch.zeros(padding, KV_HEADS, HEAD_DIM)])
    slot_mapping = torch.cat([*new_slots, torch.full((padding,), -1)])
    q_lens = [q_len for _, q_len, _ in _BATCH]
    query_start = torch.tensor([0, *torch.tensor(q_lens).cumsum(0).tolist()], dtype=torch.int32)
    common = CommonAttentionMetadata(
        query_start_loc=query_start,
        query_start_loc_cpu=query_start,
        seq_lens=torch.tensor([kv for kv, _, _ in _BATCH], dtype=torch.int32),
        num_reqs=len(_BATCH),
        num_actual_tokens=query.shape[0],
        max_query_len=max(q_lens),
        max_seq_len=max(kv for kv, _, _ in _BATCH),
        block_table_tensor=block_table,
        slot_mapping=slot_mapping,
        mm_req_doc_ranges={row: ranges for row, (_, _, ranges) in enumerate(_BATCH) if ranges},
    )
    builder = MixedMaskMetadataBuilder(SimpleNamespace(block_size=BLOCK_SIZE), ["layer"], None, torch.device("cpu"))
    metadata = builder.build(0, common)
    impl.do_kv_cache_update(None, key, value, cache, slot_mapping)
    output = torch.full_like(query, float("nan"))
    impl.forward(None, query, key, value, cache, metadata, output)
    assert torch.equal(output[-padding:], torch.zeros_like(output[-padding:]))
    return output[:-padding], torch.cat(expected), torch.cat(causal)


@pytest.mark.parametrize("window", [None, 5, 64], ids=["no-window", "window-5", "window-wider-than-batch"])
def test_step_matches_brute_force_mask(window: int | None) -> None:
    output, expected, causal = _run_step(window)
    torch.testing.assert_close(output.double(), expected, atol=1e-5, rtol=1e-5)
    # Guards the comparison: with every image row causal, the step's output would differ.
    assert not torch.allclose(expected, causal, atol=1e-3)


@pytest.mark.parametrize(
    "options",
    [
        {"alibi_slopes": [1.0] * HEADS},
        {"logits_soft_cap": 30.0},
        {"attn_type": "encoder_only"},
        {"kv_cache_dtype": "fp8"},
    ],
    ids=["alibi", "softcap", "encoder", "fp8"],
)
def test_unsupported_options_are_refused(options: dict[str, Any]) -> None:
    with pytest.raises(NotImplementedError):
        MixedMaskAttentionImpl(HEADS, HEAD_DIM, scale=1.0, num_kv_heads=KV_HEADS, **options)


# ---------------------------------------------------------------- selection


def test_cpu_platform_resolves_to_ours_only_when_an_engine_asks(monkeypatch: pytest.MonkeyPatch) -> None:
    import vllm.config
    from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend

    from diptych.engine.vllm_plugin import register

    register()
    register()  # vLLM may call plugins several times per process
    assert AttentionBackendEnum.CUSTOM.get_class() is MixedMaskAttentionBackend
    assert AttentionBackendEnum.CPU_ATTN.get_path() == "diptych.kernels.vllm_select.CPUAttentionBackend"

    def config(backend: Any, per_kind: dict[str, Any] | None = None) -> Any:
        return SimpleNamespace(attention_config=SimpleNamespace(backend=backend, backend_per_kind=per_kind or {}))

    for current, expected in (
        (None, CPUAttentionBackend),
        (config(None), CPUAttentionBackend),
        (config(AttentionBackendEnum.CPU_ATTN), CPUAttentionBackend),
        (config(AttentionBackendEnum.CUSTOM), MixedMaskAttentionBackend),
        (config(None, {"sliding_window": AttentionBackendEnum.CUSTOM}), MixedMaskAttentionBackend),
    ):
        monkeypatch.setattr(vllm.config, "get_current_vllm_config_or_none", lambda current=current: current)
        assert AttentionBackendEnum.CPU_ATTN.get_class() is expected
    with pytest.raises(AttributeError):
        vllm_select.SomethingElse  # noqa: B018


# ---------------------------------------------------------------- vLLM end to end


_RUNNER = Path(__file__).with_name("vllm_prefix_lm_run.py")
sys.path.insert(0, str(_RUNNER.parent))
import vllm_prefix_lm_run as runner  # noqa: E402


@pytest.fixture(scope="module")
def engine_runs(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: TinyCheckpoint) -> dict[str, Any]:
    """Both vLLM runs (ours, stock) at once in subprocesses, and transformers' references meanwhile."""
    root = tmp_path_factory.mktemp("gemma3_vllm")
    model_dir = tiny_checkpoint("gemma3")
    # Engine core in the runner's process (with the "uni" executor, one interpreter in all).
    env = {**os.environ, "VLLM_LOGGING_LEVEL": "WARNING", "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
    procs = {
        backend: subprocess.Popen(
            [sys.executable, str(_RUNNER), str(model_dir), str(root / f"{backend}.json"), "--backend", backend],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        for backend in ("diptych", "stock")
    }
    try:
        references = _references(model_dir)
        results = {}
        for backend, proc in procs.items():
            log, _ = proc.communicate(timeout=900)
            assert proc.returncode == 0, f"vLLM run with the {backend} backend failed:\n{log[-4000:]}"
            results[backend] = json.loads((root / f"{backend}.json").read_text())
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return {**results, **references}


def _references(model_dir: Path) -> dict[str, Any]:
    from diptych.compat import install

    install()
    from PIL import Image
    from transformers import AutoProcessor, Gemma3ForConditionalGeneration

    from diptych.models.gemma3.tiny import greedy_reference

    processor = AutoProcessor.from_pretrained(model_dir)
    model = Gemma3ForConditionalGeneration.from_pretrained(model_dir).eval()
    out: dict[str, list[list[int]]] = {"hf_prompt_ids": [], "bidirectional": [], "causal": []}
    for colour, question in runner.PROMPTS:
        image = Image.new("RGB", (64, 64), colour) if colour else None
        for mode, bidirectional in (("bidirectional", True), ("causal", False)):
            prompt, answer = greedy_reference(
                model, processor, image, question, bidirectional=bidirectional, max_new_tokens=runner.MAX_TOKENS
            )
            out[mode].append(answer)
        out["hf_prompt_ids"].append(prompt)
    return out


def test_vllm_and_transformers_see_the_same_prompts(engine_runs: dict[str, Any]) -> None:
    assert engine_runs["diptych"]["prompt_ids"] == engine_runs["hf_prompt_ids"]
    assert engine_runs["stock"]["prompt_ids"] == engine_runs["hf_prompt_ids"]


def test_the_image_mask_matters_for_this_model(engine_runs: dict[str, Any]) -> None:
    # Without this, the equalities below could not tell the two masks apart.
    with_image = [i for i, (colour, _) in enumerate(runner.PROMPTS) if colour]
    assert any(engine_runs["bidirectional"][i] != engine_runs["causal"][i] for i in with_image)
    assert engine_runs["bidirectional"][runner.AGAIN] != engine_runs["causal"][runner.AGAIN]


def test_diptych_backend_equals_transformers_bidirectional(engine_runs: dict[str, Any]) -> None:
    ours = engine_runs["diptych"]
    assert ours["outputs"] == engine_runs["bidirectional"]
    # Again, with the image in a prefix-cached block: only the prompt's tail is computed.
    assert ours["again_cached_tokens"] >= runner.BLOCK_SIZE
    assert ours["again"] == engine_runs["bidirectional"][runner.AGAIN]


def test_text_only_prompt_is_plain_causal(engine_runs: dict[str, Any]) -> None:
    text_only = [i for i, (colour, _) in enumerate(runner.PROMPTS) if colour is None]
    for i in text_only:
        assert engine_runs["diptych"]["outputs"][i] == engine_runs["causal"][i] == engine_runs["stock"]["outputs"][i]


def test_stock_cpu_attention_is_causal_and_disagrees(engine_runs: dict[str, Any]) -> None:
    stock = engine_runs["stock"]
    assert stock["outputs"] == engine_runs["causal"]
    assert stock["outputs"] != engine_runs["bidirectional"]
    assert stock["again"] != engine_runs["bidirectional"][runner.AGAIN]
