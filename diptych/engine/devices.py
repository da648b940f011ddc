"""The serving device and dtype: what ``auto`` means, and whether the device can run it.

Checked before any engine starts, so that a missing GPU or a dtype it cannot run is one line
at start-up rather than a stack of tracebacks from two engines a minute later.
"""

from __future__ import annotations

import logging
from pathlib import Path

logger = logging.getLogger(__name__)

DTYPES = ("float32", "bfloat16", "float16")


class DeviceError(RuntimeError):
    """The configured device or dtype cannot serve here."""


def resolve_dtype(setting: str, device: str, declared: str | None) -> str:
    """vLLM's meaning of ``auto``: the checkpoint's declared dtype on CUDA, float32 on CPU.

    On CPU, half precision is only fast with native bf16 instructions (docs/deployment.md), so
    ``auto`` keeps full precision there; an explicit setting is taken as it is.
    """
    if setting != "auto":
        return setting
    if device.startswith("cuda") and declared in DTYPES:
        return declared
    return "float32"


def check_device(device: str, dtype: str) -> None:
    """Raise :class:`DeviceError` naming the problem when ``device`` cannot run ``dtype`` here."""
    import torch

    if dtype not in DTYPES:
        raise DeviceError(f"dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    if device == "cuda":
        if not torch.cuda.is_available():
            reason = "this torch is built without CUDA" if torch.version.cuda is None else "no CUDA device is visible"
            raise DeviceError(f"--device cuda: {reason}; serve with --device cpu, or on a host with a GPU")
        if dtype == "bfloat16" and not torch.cuda.is_bf16_supported():
            name = torch.cuda.get_device_name()
            raise DeviceError(f"--dtype bfloat16: the GPU ({name}) has no bfloat16 support; use --dtype float16")
    elif dtype != "float32" and not _cpu_has_native_bf16():
        # Runs, but emulated: worth a line in the log, not a refusal.
        logger.warning("--dtype %s on a CPU without avx512_bf16/amx: half precision is emulated and slower "
                       "than float32 here", dtype)


def _cpu_has_native_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags
