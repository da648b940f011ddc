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

The vLLM internals this relies on (the CPU platform's resolution, the current config, the
attention config's fields) are reached through :mod:`diptych.compat.vllm_internals`.
"""

from __future__ import annotations

import logging
from typing import Any

from diptych.compat.vllm_internals import (
    UnsupportedVllmError,
    current_vllm_config,
    register_attention_backend_path,
    requested_attention_backends,
    require_supported_vllm,
    vllm_cpu_attention_backend,
)

logger = logging.getLogger(__name__)

SELECTED_NAME = "CPUAttentionBackend"
BACKEND_PATH = "diptych.kernels.vllm_backend.MixedMaskAttentionBackend"


def register_attention_backend() -> None:
    """Register the backend as CUSTOM and as the CPU platform's resolver (idempotent, imports no torch code).

    An existing override of either name (another plugin's, or the user's) is left alone.
    With a vLLM of another series nothing is registered, only a warning logged: this runs
    in every vLLM process of the environment (the plugin entry point), also where vLLM is
    used without Diptych, and the CPU_ATTN override would then route stock engines through
    internals that may have changed. Diptych's own engine refuses to start in that case.
    """
    try:
        require_supported_vllm()
    except UnsupportedVllmError as exc:
        logger.warning("%s Diptych's attention backend is not registered.", exc)
        return
    register_attention_backend_path("CUSTOM", BACKEND_PATH)
    register_attention_backend_path("CPU_ATTN", f"{__name__}.{SELECTED_NAME}")


def asks_for_custom(vllm_config: Any) -> bool:
    """Whether an engine's config requests the CUSTOM backend, globally or for any KV-cache kind."""
    return "CUSTOM" in requested_attention_backends(vllm_config)


def __getattr__(name: str) -> Any:
    if name != SELECTED_NAME:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    if asks_for_custom(current_vllm_config()):
        from diptych.kernels.vllm_backend import MixedMaskAttentionBackend

        return MixedMaskAttentionBackend
    return vllm_cpu_attention_backend()
