"""vLLM's extension points that Diptych subclasses in place, checked against the installed vLLM.

These classes stay imported where they are subclassed (see ``diptych.compat.vllm_internals``),
so what can break on an upgrade is the contract: the methods we override must still exist
on vLLM's base with the parameters we accept, and the hooks vLLM calls by duck typing must
still be called that way. Each case compares our class with vLLM's; no engine is started.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
from collections.abc import Callable
from typing import Any

import pytest

vllm = pytest.importorskip("vllm")


def _parameters(function: Callable[..., Any]) -> list[str]:
    variadic = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    return [p.name for p in inspect.signature(function).parameters.values() if p.kind not in variadic]


def _assert_overrides(ours: type, base: type, names: list[str]) -> None:
    """Each method exists on vLLM's base, and ours takes the base's parameters (by name, in order)."""
    for name in names:
        assert hasattr(base, name), f"{base.__qualname__}.{name} is gone from vLLM"
        theirs, mine = _parameters(getattr(base, name)), _parameters(getattr(ours, name))
        assert mine[: len(theirs)] == theirs, f"{ours.__qualname__}.{name}{mine} no longer matches vLLM's {theirs}"


def test_attention_backend_overrides_match_vllms_bases() -> None:
    from vllm.v1.attention.backend import AttentionBackend, AttentionImpl, AttentionMetadataBuilder

    from diptych.kernels.vllm_backend import (
        MixedMaskAttentionBackend,
        MixedMaskAttentionImpl,
        MixedMaskMetadataBuilder,
    )

    _assert_overrides(
        MixedMaskAttentionBackend,
        AttentionBackend,
        ["get_name", "get_impl_cls", "get_builder_cls", "get_supported_kernel_block_sizes",
         "supported_kv_cache_layouts", "supports_mm_prefix", "supports_sliding_window"],
    )
    assert isinstance(AttentionBackend.forward_includes_kv_cache_update, bool)
    _assert_overrides(MixedMaskAttentionImpl, AttentionImpl, ["__init__", "forward"])
    _assert_overrides(MixedMaskMetadataBuilder, AttentionMetadataBuilder, ["__init__", "build"])


def test_kv_cache_update_hook_is_called_with_the_arguments_we_take() -> None:
    # Backends with forward_includes_kv_cache_update = False get their cache write through
    # impl.do_kv_cache_update, which is not on AttentionImpl: vLLM calls it by duck typing.
    from vllm.model_executor.layers.attention import attention

    from diptych.kernels.vllm_backend import MixedMaskAttentionImpl

    tree = ast.parse(inspect.getsource(attention))
    calls = [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "do_kv_cache_update"
    ]
    assert calls, "vLLM no longer calls impl.do_kv_cache_update"
    ours = _parameters(MixedMaskAttentionImpl.do_kv_cache_update)[1:]  # without self
    for call in calls:
        assert len(call.args) == len(ours) and not call.keywords


def test_scheduler_overrides_match_async_scheduler() -> None:
    from vllm.v1.core.sched.async_scheduler import AsyncScheduler
    from vllm.v1.request import Request

    from diptych.models.janus_pro.pairing import PairingScheduler

    _assert_overrides(PairingScheduler, AsyncScheduler, ["add_request", "finish_requests"])
    # What the pairing reads from a request.
    fields = set(inspect.signature(Request.__init__).parameters) | set(vars(Request))
    assert {"request_id", "sampling_params"} <= fields


def test_multimodal_model_hooks_match_vllms_contract() -> None:
    from vllm.model_executor.models.interfaces import SupportsMultiModal
    from vllm.multimodal.processing import BaseDummyInputsBuilder, BaseMultiModalProcessor

    from diptych.models.janus_pro.vllm_model import (
        JanusDummyInputsBuilder,
        JanusForConditionalGeneration,
        JanusMultiModalProcessor,
    )

    _assert_overrides(
        JanusMultiModalProcessor, BaseMultiModalProcessor, ["_get_mm_fields_config", "_get_prompt_updates"]
    )
    _assert_overrides(JanusDummyInputsBuilder, BaseDummyInputsBuilder, ["get_dummy_text", "get_dummy_mm_data"])
    _assert_overrides(
        JanusForConditionalGeneration,
        SupportsMultiModal,
        ["get_placeholder_str", "embed_multimodal", "embed_input_ids"],
    )
    # Helpers the model calls (vLLM's multimodal model guide documents them), with the arguments it passes.
    assert {"width", "height", "num_images", "overrides"} <= set(_parameters(BaseDummyInputsBuilder._get_dummy_images))
    assert _parameters(SupportsMultiModal._mark_tower_model)[:3] == ["self", "vllm_config", "modalities"]
    assert _parameters(SupportsMultiModal._mark_language_model)[:2] == ["self", "vllm_config"]


def test_stat_logger_matches_stat_logger_base() -> None:
    from vllm.v1.metrics.loggers import StatLoggerBase
    from vllm.v1.metrics.stats import SchedulerStats

    from diptych.engine.ar_stats import SchedulerLoad, scheduler_load_logger

    load = SchedulerLoad()
    logger_class = scheduler_load_logger(load)
    _assert_overrides(logger_class, StatLoggerBase, ["__init__", "record", "log_engine_initialized"])
    logger_class(None, 0).record(SchedulerStats(num_running_reqs=2, num_waiting_reqs=3, kv_cache_usage=0.5), None)
    assert (load.running, load.waiting, load.kv_cache_usage, load.steps_reported) == (2, 3, 0.5, 1)
    read = {"num_running_reqs", "num_waiting_reqs", "kv_cache_usage"}
    assert read <= {field.name for field in dataclasses.fields(SchedulerStats)}


def test_logits_processor_overrides_match_vllms_base() -> None:
    from vllm.v1.sample.logits_processor import LogitsProcessor

    from diptych.models.janus_pro.cfg import JanusLogitsProcessor

    _assert_overrides(
        JanusLogitsProcessor,
        LogitsProcessor,
        ["__init__", "validate_params", "is_argmax_invariant", "update_state", "apply"],
    )
