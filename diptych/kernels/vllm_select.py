"""How an engine gets Diptych's mixed-mask attention backend from vLLM's CPU platform.

vLLM resolves an attention backend per layer as ``platform.get_attn_backend_cls(requested)``.
GPU platforms honour a requested ``AttentionBackendEnum.CUSTOM`` (registered by our plugin);
the CPU platform ignores the request ("Cannot use ... on CPU") and always returns the
class path registered for ``CPU_ATTN``. vLLM's documented override of a backend's class
path (``register_backend(AttentionBackendEnum.CPU_ATTN, path)``) is therefore the hook on
CPU, and the plugin points it at ``CPUAttentionBackend`` in this module.

That name is resolved here, per engine, while vLLM builds the model (its config is current
then): Diptych's backend when the engine asked for ``CUSTOM``, vLLM's own CPU backend
class otherwise. So engines that do not ask (a plain causal VLM, vLLM used directly) get
exactly vLLM's class, not a wrapper.
"""

from __future__ import annotations

from typing import Any

SELECTED_NAME = "CPUAttentionBackend"
BACKEND_PATH = "diptych.kernels.vllm_backend.MixedMaskAttentionBackend"


def register_attention_backend() -> None:
    """Register the backend as CUSTOM and as the CPU platform's resolver (idempotent, imports no torch code).

    An existing override of either name (another plugin's, or the user's) is left alone.
    """
    from vllm.v1.attention.backends.registry import AttentionBackendEnum, register_backend

    if not AttentionBackendEnum.CUSTOM.is_overridden():
        register_backend(AttentionBackendEnum.CUSTOM, BACKEND_PATH)
    if not AttentionBackendEnum.CPU_ATTN.is_overridden():
        register_backend(AttentionBackendEnum.CPU_ATTN, f"{__name__}.{SELECTED_NAME}")


def asks_for_custom(vllm_config: Any) -> bool:
    """Whether an engine's config requests the CUSTOM backend, globally or for any KV-cache kind."""
    from vllm.v1.attention.backends.registry import AttentionBackendEnum

    attention_config = getattr(vllm_config, "attention_config", None)
    if attention_config is None:
        return False
    requested = {attention_config.backend, *attention_config.backend_per_kind.values()}
    return AttentionBackendEnum.CUSTOM in requested


def __getattr__(name: str) -> Any:
    if name != SELECTED_NAME:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from vllm.config import get_current_vllm_config_or_none

    if asks_for_custom(get_current_vllm_config_or_none()):
        from diptych.kernels.vllm_backend import MixedMaskAttentionBackend

        return MixedMaskAttentionBackend
    from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend

    return CPUAttentionBackend
