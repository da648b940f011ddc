"""Diptych's vLLM general plugin (entry point ``vllm.general_plugins: diptych``).

vLLM calls every general plugin in each of its processes before it touches model code:
the process that builds the engine config, the engine-core process, each worker, and the
fresh interpreter in which its model registry inspects model classes. That makes this the
one hook that reaches all of them, whether they are forked or spawned. Importing this
module is cheap (no torch, transformers or vLLM); ``register`` installs the torchvision
compatibility layer, itself only an import hook.
"""

from __future__ import annotations


def register() -> None:
    """Called by vLLM (possibly several times per process; everything here is idempotent)."""
    from diptych.compat import install

    install()
    _register_models()
    from diptych.kernels.vllm_select import register_attention_backend

    register_attention_backend()


def _register_models() -> None:
    """Our out-of-tree vLLM models, by "module:Class" so that nothing is imported until used."""
    from vllm import ModelRegistry

    from diptych.models.registry import VLLM_MODELS

    supported = set(ModelRegistry.get_supported_archs())
    for architecture, target in VLLM_MODELS.items():
        if architecture not in supported:
            ModelRegistry.register_model(architecture, target)
