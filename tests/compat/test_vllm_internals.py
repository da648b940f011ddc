"""Each vLLM internal that ``diptych.compat.vllm_internals`` wraps, checked against the installed vLLM.

No engine is started: every case imports vLLM, inspects what the wrapper relies on
(signature, attribute, tensor layout) and, where the internal is a plain object, runs the
wrapper on it. After a vLLM upgrade, each failure here names one internal to re-read.
"""

from __future__ import annotations

import ast
import asyncio
import importlib.metadata
import inspect
import logging
import textwrap
from collections.abc import Callable, Iterator
from types import SimpleNamespace
from typing import Any

import pytest
import torch

vllm = pytest.importorskip("vllm")

from vllm.config import VllmConfig, set_current_vllm_config  # noqa: E402
from vllm.config.attention import AttentionConfig  # noqa: E402
from vllm.v1.attention.backend import AttentionBackend, CommonAttentionMetadata  # noqa: E402
from vllm.v1.attention.backends.registry import AttentionBackendEnum  # noqa: E402
from vllm.v1.engine.async_llm import AsyncLLM  # noqa: E402

from diptych.compat import vllm_internals as vi  # noqa: E402


@pytest.fixture(autouse=True)
def _fresh_version_check() -> Iterator[None]:
    """Each case sees the version check run anew (it is cached per process)."""
    vi.require_supported_vllm.cache_clear()
    yield
    vi.require_supported_vllm.cache_clear()


def _self_attributes_assigned(function: Callable[..., Any]) -> set[str]:
    """Names ``X`` of every ``self.X = ...`` (annotated or not) in a function's source."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(function)))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, ast.AnnAssign):
            targets = [node.target]
        else:
            continue
        for target in targets:
            if isinstance(target, ast.Attribute) and isinstance(target.value, ast.Name) and target.value.id == "self":
                names.add(target.attr)
    return names


# ----------------------------------------------------------------- version check


def test_the_version_is_read_from_the_distribution_that_provides_vllm() -> None:
    providers = importlib.metadata.packages_distributions()["vllm"]
    assert vi.installed_vllm_version() == importlib.metadata.version(providers[0]) == vllm.__version__


def test_the_installed_vllm_is_the_supported_series() -> None:
    vi.require_supported_vllm()  # raises otherwise: this environment is what the internals were read from


@pytest.mark.parametrize("installed", ["0.33.0", "0.31.4", "1.32.0", "dev", None])
def test_another_version_is_refused_naming_both(installed: str | None, monkeypatch: pytest.MonkeyPatch) -> None:
    supported = ".".join(map(str, vi.SUPPORTED_VLLM))
    with pytest.raises(vi.UnsupportedVllmError, match=rf"{supported}\.x") as refused:
        vi.check_vllm_version(installed)
    assert str(installed) in str(refused.value) or installed is None
    # And at the first use of a wrapper, whatever the process did before.
    monkeypatch.setattr(vi, "installed_vllm_version", lambda: installed)
    with pytest.raises(vi.UnsupportedVllmError):
        vi.requested_attention_backends(None)


@pytest.mark.parametrize("suffix", ["0", "7", "1+cpu", "2.dev3"])
def test_any_release_of_the_supported_series_passes(suffix: str) -> None:
    vi.check_vllm_version(".".join(map(str, vi.SUPPORTED_VLLM)) + f".{suffix}")


def test_the_plugin_registers_nothing_under_another_version(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from diptych.kernels import vllm_select

    registered: list[tuple[str, str]] = []
    monkeypatch.setattr(vllm_select, "register_attention_backend_path", lambda *args: registered.append(args))
    monkeypatch.setattr(vi, "installed_vllm_version", lambda: "0.99.0")
    with caplog.at_level(logging.WARNING, logger=vllm_select.__name__):
        vllm_select.register_attention_backend()
    assert registered == []
    assert "0.99.0" in caplog.text


# ----------------------------------------------------------------- AsyncLLM


def test_build_async_llm_passes_stat_loggers_through() -> None:
    from vllm.engine.arg_utils import AsyncEngineArgs

    parameters = inspect.signature(AsyncLLM.from_engine_args).parameters
    assert list(parameters)[:1] == ["engine_args"] and "stat_loggers" in parameters
    # The engine arguments ar_engine passes by name, accepted by vLLM's dataclass.
    args = AsyncEngineArgs(
        model="unused", kv_cache_memory_bytes=1 << 20, limit_mm_per_prompt={"image": 1}, enable_log_requests=False
    )
    assert args.kv_cache_memory_bytes == 1 << 20 and args.limit_mm_per_prompt == {"image": 1}


def test_stop_output_handler_cancels_asyncllms_output_task() -> None:
    assert "output_handler" in _self_attributes_assigned(AsyncLLM.__init__)
    assert "output_handler" in _self_attributes_assigned(AsyncLLM._run_output_handler)

    async def run() -> asyncio.Task[None]:
        task = asyncio.create_task(asyncio.sleep(3600))
        # A bounded wait: a handler that was not cancelled would otherwise hang the test.
        llm = SimpleNamespace(output_handler=task)
        await asyncio.wait_for(vi.stop_output_handler(llm), 10)  # type: ignore[arg-type]
        await vi.stop_output_handler(SimpleNamespace(output_handler=None))  # type: ignore[arg-type]
        return task

    assert asyncio.run(run()).cancelled()


def test_fail_open_requests_puts_engine_dead_on_every_open_stream() -> None:
    from vllm.sampling_params import RequestOutputKind
    from vllm.v1.engine.exceptions import EngineDeadError
    from vllm.v1.engine.output_processor import OutputProcessor, RequestOutputCollector

    assert "output_processor" in _self_attributes_assigned(AsyncLLM.__init__)
    processor = OutputProcessor(None, log_stats=False)
    streams = [RequestOutputCollector(RequestOutputKind.DELTA, request_id=f"r{i}") for i in range(2)]
    for i, stream in enumerate(streams):
        processor.request_states[f"r{i}"] = SimpleNamespace(queue=stream)  # what propagate_error reads
    vi.fail_open_requests(SimpleNamespace(output_processor=processor))  # type: ignore[arg-type]
    for stream in streams:
        with pytest.raises(EngineDeadError):
            stream.get_nowait()


def test_render_prompt_parses_then_renders_through_the_engines_renderer() -> None:
    from vllm.engine.protocol import EngineClient
    from vllm.renderers.base import BaseRenderer
    from vllm.renderers.inputs.preprocess import parse_model_prompt

    assert {"renderer", "model_config"} <= set(EngineClient.__annotations__)
    assert {"renderer", "model_config"} <= _self_attributes_assigned(AsyncLLM.__init__)
    render = BaseRenderer.render_cmpl_async
    assert inspect.iscoroutinefunction(render)
    parameters = list(inspect.signature(render).parameters.values())
    assert [p.name for p in parameters[:3]] == ["self", "prompts", "tok_params"] and parameters[2].default is None
    assert list(inspect.signature(parse_model_prompt).parameters) == ["model_config", "prompt"]

    rendered: list[Any] = []

    async def render_cmpl_async(prompts: list[Any]) -> list[Any]:
        rendered.extend(prompts)
        return [("engine input", prompts[0])]

    llm = SimpleNamespace(model_config=SimpleNamespace(is_encoder_decoder=False), renderer=SimpleNamespace())
    llm.renderer.render_cmpl_async = render_cmpl_async
    prompt = {"prompt_token_ids": [1, 2, 3]}
    out = asyncio.run(vi.render_prompt(llm, prompt))  # type: ignore[arg-type]
    assert rendered == [parse_model_prompt(llm.model_config, prompt)] and out == ("engine input", rendered[0])


def test_vllm_error_kind_knows_vllms_exceptions() -> None:
    from vllm.exceptions import GracefulHTTPError, QueueOverflowError, VLLMClientError, VLLMValidationError
    from vllm.v1.engine.exceptions import EngineDeadError, EngineGenerateError

    assert issubclass(QueueOverflowError, GracefulHTTPError) and issubclass(VLLMValidationError, VLLMClientError)
    assert vi.vllm_error_kind(EngineDeadError()) == "engine_dead"
    assert vi.vllm_error_kind(QueueOverflowError()) == "queue_full"  # what admission control raises
    assert vi.vllm_error_kind(VLLMValidationError("too long")) == "client"
    assert vi.vllm_error_kind(EngineGenerateError()) == "generate_failed"
    assert vi.vllm_error_kind(ValueError("not vLLM's")) is None
    # ar_engine reads the real failure from __cause__: generate() must chain it.
    assert "raise EngineGenerateError() from e" in inspect.getsource(AsyncLLM.generate)


# ----------------------------------------------------------------- attention backend selection


def test_the_cpu_platform_resolves_cpu_attn_whatever_is_requested() -> None:
    from vllm.platforms.cpu import CpuPlatform

    plain = SimpleNamespace(use_sparse=False, use_mla=False)  # the selector config fields it reads first
    for requested in (AttentionBackendEnum.CUSTOM, AttentionBackendEnum.FLEX_ATTENTION, None):
        assert CpuPlatform.get_attn_backend_cls(requested, plain) == AttentionBackendEnum.CPU_ATTN.get_path()


def test_register_attention_backend_path_overrides_once_and_restores() -> None:
    slot = AttentionBackendEnum.CPU_ATTN
    before = slot.get_path() if slot.is_overridden() else None
    slot.clear_override()
    try:
        assert vi.register_attention_backend_path("CPU_ATTN", "somewhere.Mine")
        assert not vi.register_attention_backend_path("CPU_ATTN", "somewhere.Else")  # someone's override stays
        assert slot.get_path() == "somewhere.Mine" and slot.is_overridden()
    finally:
        slot.clear_override()
        if before is not None:
            vi.register_attention_backend_path("CPU_ATTN", before)


def test_the_selector_resolves_a_module_getattr_name() -> None:
    from vllm.utils.import_utils import resolve_obj_by_qualname

    from diptych.kernels.vllm_backend import MixedMaskAttentionBackend

    # How vLLM's selector turns CPU_ATTN's path into a class; our path is a lazy module name.
    path = "diptych.kernels.vllm_select.CPUAttentionBackend"
    assert resolve_obj_by_qualname(path) is vi.vllm_cpu_attention_backend()
    with set_current_vllm_config(VllmConfig(attention_config=AttentionConfig(backend="CUSTOM"))):
        assert resolve_obj_by_qualname(path) is MixedMaskAttentionBackend


def test_requested_attention_backends_reads_global_and_per_kind_choices() -> None:
    def requested(**options: Any) -> frozenset[str]:
        return vi.requested_attention_backends(SimpleNamespace(attention_config=AttentionConfig(**options)))

    assert requested() == frozenset()
    assert requested(backend="CUSTOM") == {"CUSTOM"}
    assert requested(backend="CPU_ATTN", backend_per_kind={"sliding_window": "CUSTOM"}) == {"CPU_ATTN", "CUSTOM"}
    assert vi.requested_attention_backends(SimpleNamespace()) == frozenset()


def test_current_vllm_config_is_the_one_being_built() -> None:
    config = VllmConfig()
    assert vi.current_vllm_config() is None
    with set_current_vllm_config(config):
        assert vi.current_vllm_config() is config
    assert vi.current_vllm_config() is None


def test_vllm_cpu_attention_backend_is_cpu_attns_own_class() -> None:
    from vllm.utils.import_utils import resolve_obj_by_qualname

    backend = vi.vllm_cpu_attention_backend()
    assert backend is resolve_obj_by_qualname(AttentionBackendEnum.CPU_ATTN.value)  # the path before any override
    assert issubclass(backend, AttentionBackend)


# ----------------------------------------------------------------- per-step metadata


def test_read_step_metadata_reads_the_batch() -> None:
    query_start = torch.tensor([0, 5, 6], dtype=torch.int32)
    block_table = torch.tensor([[3, 1, 0], [2, 4, 5], [9, 9, 9]], dtype=torch.int32)  # one spare row
    common = CommonAttentionMetadata(
        query_start_loc=query_start,
        query_start_loc_cpu=query_start,
        seq_lens=torch.tensor([5, 9], dtype=torch.int32),
        num_reqs=2,
        num_actual_tokens=8,
        max_query_len=5,
        max_seq_len=9,
        block_table_tensor=block_table,
        slot_mapping=torch.arange(8),
        mm_req_doc_ranges={1: [(2, 4)]},
    )
    step = vi.read_step_metadata(common)
    assert (step.num_reqs, step.num_actual_tokens, step.query_bounds, step.seq_lens) == (2, 8, [0, 5, 6], [5, 9])
    assert dict(step.image_ranges) == {1: [(2, 4)]} and step.causal and step.device == query_start.device
    assert torch.equal(step.block_table, block_table[:2])
    common.causal = False
    common.mm_req_doc_ranges = None
    step = vi.read_step_metadata(common)
    assert not step.causal and dict(step.image_ranges) == {}


# ----------------------------------------------------------------- paged KV cache


def test_paged_kv_layout_is_the_view_vllm_hands_each_layer() -> None:
    from vllm.v1.kv_cache_interface import FullAttentionSpec, KVCacheTensor, create_kv_cache_views

    blocks, heads, block_size, head_size, layers = 5, 2, 4, 16, 2
    spec = FullAttentionSpec(block_size=block_size, num_kv_heads=heads, head_size=head_size, dtype=torch.float32)
    page = spec.page_size_bytes
    raw = torch.zeros(layers * blocks * page, dtype=torch.int8)
    placement = KVCacheTensor(
        size=raw.numel(), layers=[f"layer{i}" for i in range(layers)], layer_stride=blocks * page, block_stride=page
    )
    (layout,) = vi.paged_kv_layouts()
    assert layout.is_layer_compact and layout.is_block_contiguous  # one dense [B, H, N, C] tensor per layer
    views = create_kv_cache_views(raw, spec, blocks, layout, placement)
    cache = views[1]
    assert cache.shape == (blocks, heads, block_size, 2 * head_size) and cache.dtype == torch.float32
    assert vi.kv_cache_block_size(cache) == block_size and vi.kv_cache_channels(cache) == 2 * head_size

    where_blocks, where_offsets = torch.tensor([3, 0]), torch.tensor([1, 2])
    rows = torch.randn(2, heads, 2 * head_size)
    vi.write_kv_slots(cache, where_blocks, where_offsets, rows)
    assert torch.equal(vi.read_kv_slots(cache, where_blocks, where_offsets), rows)
    # The bytes land where vLLM's layout puts (layer 1, block 3, head 1, offset 1).
    flat = raw.view(torch.float32)
    start = (blocks * page + 3 * page) // 4 + (1 * block_size + 1) * 2 * head_size
    assert torch.equal(flat[start : start + 2 * head_size], rows[0, 1])
    assert not views[0].any()  # layer 0 untouched


# ----------------------------------------------------------------- model utilities


def test_merge_multimodal_embeddings_fills_marked_rows_in_order() -> None:
    embeds = torch.zeros(5, 3)
    marked = torch.tensor([False, True, True, False, True])
    merged = vi.merge_multimodal_embeddings(embeds, [torch.ones(2, 3), torch.full((1, 3), 2.0)], marked)
    assert torch.equal(merged[:, 0], torch.tensor([0.0, 1.0, 1.0, 0.0, 2.0]))
    with pytest.raises(ValueError):  # more embeddings than placeholders is refused, not truncated
        vi.merge_multimodal_embeddings(torch.zeros(5, 3), [torch.ones(4, 3)], marked)
