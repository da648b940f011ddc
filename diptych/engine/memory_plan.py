"""The memory plan: what each engine will hold on each device, added up before any engine starts.

On one GPU, vLLM takes its KV cache and the flow worker its weights and activations; each
sizing itself from what is free when it starts would let the start order decide who runs out
of memory, at the first large request. So the server computes, before loading anything:

- the weights of each engine, from the safetensors headers of the files the family adapter
  lists (``FamilyAdapter.weight_files``), in the serving dtype both engines cast them to;
- vLLM's KV cache (setting ``kv_cache_gib``);
- the flow worker's activation budget (setting ``flow_memory_gib``; unset on a GPU, half of
  what the other lines leave, fixed here and handed to the worker);
- what the flow worker keeps across requests (setting ``flow_cache_gib``: prompt embeddings,
  prefix keys and values);
- a fixed headroom per engine process on the device (:data:`HEADROOM_PER_ENGINE`);

and refuses to start on a GPU, naming every number, when the sum exceeds the free memory.
Lines are grouped by the device their engine is placed on, so placing engines on several
devices is a matter of the ``placement`` argument.

Pure functions over headers and plain numbers, so the arithmetic is tested on CPU with the
device's memory faked; :func:`device_memory` is the one place that asks a device.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import struct
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

from diptych.engine.flow_budget import default_share, host_available_bytes
from diptych.engine.parallel import ar_devices, flow_devices
from diptych.models.base import Capabilities, FamilyAdapter, WeightFiles
from diptych.types import EngineConfig

logger = logging.getLogger(__name__)

GIB = 1 << 30
# Per engine process placed on a GPU: its CUDA context, library workspaces (cuBLAS) and the
# allocator's rounding. Also all the plan leaves for vLLM's own activations and CUDA graphs:
# given an explicit KV-cache size, vLLM runs its profile pass but sizes nothing from it, so
# they have no line of their own (a large model with long batches may need more than this).
HEADROOM_PER_ENGINE = GIB // 2

# Bytes per element of safetensors' dtypes; the floating ones are cast to a serving dtype.
_STORED_BYTES = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1,
    "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U64": 8, "U32": 4, "U16": 2, "U8": 1, "BOOL": 1,
}
_FLOATING = frozenset({"F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2"})
# Serving dtypes by torch-free name; "auto" keeps each tensor's stored dtype.
SERVING_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
_MAX_HEADER_BYTES = 100 << 20  # safetensors' own limit


class MemoryPlanError(ValueError):
    """The plan does not fit its device, or cannot be made; the message names the numbers."""


@dataclass(frozen=True)
class DeviceMemory:
    free: int
    total: int


@dataclass(frozen=True)
class PlanLine:
    engine: str  # "ar" (vLLM) or "flow" (the flow worker)
    component: str  # "weights <component>", "KV cache", "activations", "cache"
    bytes: int


@dataclass(frozen=True)
class DevicePlan:
    device: str
    memory: DeviceMemory
    lines: tuple[PlanLine, ...]
    headroom: int

    @property
    def needed(self) -> int:
        return sum(line.bytes for line in self.lines) + self.headroom

    @property
    def fits(self) -> bool:
        # A flow worker left no activations at all could not run a single request.
        starved = any(line.component == "activations" and line.bytes <= 0 for line in self.lines)
        return self.needed <= self.memory.free and not starved

    def describe(self) -> str:
        """One line naming every number, in GiB."""
        parts = " + ".join(f"{line.engine} {line.component} {_gib(line.bytes)}" for line in self.lines)
        per_engine = f", {_gib(HEADROOM_PER_ENGINE)} per engine process" if self.headroom else ""
        return (f"{self.device}: {_gib(self.needed)} GiB needed ({parts} + headroom {_gib(self.headroom)}"
                f"{per_engine}), {_gib(self.memory.free)} GiB free of {_gib(self.memory.total)} GiB")


@dataclass(frozen=True)
class MemoryPlan:
    devices: tuple[DevicePlan, ...]

    def bytes_of(self, engine: str, component: str) -> int:
        return sum(line.bytes for plan in self.devices for line in plan.lines
                   if (line.engine, line.component) == (engine, component))

    def check(self) -> None:
        """Raise :class:`MemoryPlanError` naming the numbers of every device the plan does not fit."""
        over = [plan for plan in self.devices if not plan.fits]
        if over:
            raise MemoryPlanError(
                "not enough device memory for the engines: " + "; ".join(plan.describe() for plan in over)
                + ". Lower --kv-cache-gib, --flow-memory-gib or --flow-cache-gib, or serve a smaller model"
            )


def read_header(path: Path) -> dict[str, dict[str, object]]:
    """A safetensors file's tensor entries (name → dtype, shape, offsets), without its data.

    The format: an 8-byte little-endian header length, then that many bytes of JSON.
    """
    with open(path, "rb") as file:
        prefix = file.read(8)
        if len(prefix) != 8:
            raise ValueError(f"{path}: not a safetensors file (shorter than its header length)")
        (length,) = struct.unpack("<Q", prefix)
        if length > min(_MAX_HEADER_BYTES, os.fstat(file.fileno()).st_size - 8):
            raise ValueError(f"{path}: not a safetensors file (header length {length} past the file's end)")
        try:
            header = json.loads(file.read(length))
        except ValueError as exc:  # JSON or UTF-8
            raise ValueError(f"{path}: not a safetensors file (its header is not JSON: {exc})") from exc
    if not isinstance(header, dict):
        raise ValueError(f"{path}: not a safetensors file (its header is not a JSON object)")
    header.pop("__metadata__", None)
    return header


def parameter_counts(weights: WeightFiles) -> dict[str, int]:
    """Elements per stored dtype (safetensors' names: "F32", "BF16", ...) of the tensors ``weights`` keeps."""
    counts: dict[str, int] = {}
    for path in weights.files:
        for name, entry in read_header(path).items():
            if not weights.keeps(name):
                continue
            dtype, shape = str(entry["dtype"]), entry["shape"]
            if dtype not in _STORED_BYTES:
                raise ValueError(f"{path}: tensor {name} has dtype {dtype}, unknown to the memory plan")
            elements = 1
            for side in shape:  # type: ignore[attr-defined]
                elements *= int(side)
            counts[dtype] = counts.get(dtype, 0) + elements
    return counts


def weight_bytes(counts: Mapping[str, int], dtype: str) -> int:
    """Bytes of the counted tensors once loaded: floating ones in ``dtype`` ("auto": as stored)."""
    if dtype != "auto" and dtype not in SERVING_BYTES:
        raise ValueError(f"dtype {dtype!r} is not one of auto, {', '.join(SERVING_BYTES)}")
    return sum(
        count * (SERVING_BYTES[dtype] if dtype != "auto" and stored in _FLOATING else _STORED_BYTES[stored])
        for stored, count in counts.items()
    )


def plan_memory(
    weights: Mapping[str, Sequence[WeightFiles]],
    placement: Mapping[str, str],
    memory: Callable[[str], DeviceMemory],
    *,
    kv_cache_bytes: int,
    flow_memory_bytes: int | None,
    cache_bytes: int = 0,
    dtype: str = "auto",
    ar_model_parts: int = 1,
) -> MemoryPlan:
    """The plan of the engines in ``placement`` (engine → device; an engine not there does not run).

    vLLM's ranks are "ar", "ar.1", …, each holding ``1 / ar_model_parts`` of the AR weights
    (its tensor-parallel × pipeline-parallel share) and a KV cache of ``kv_cache_bytes``
    (vLLM's budget is per rank).

    ``weights``: the adapter's ``weight_files()``. ``dtype``: the serving dtype of every
    engine's floating-point weights (both engines cast to it), or "auto" for each tensor's
    stored dtype. ``flow_memory_bytes`` None: the flow worker gets
    :func:`default_share` of what the device has left after every other line.
    """
    devices = []
    for device in dict.fromkeys(placement.values()):  # in order of first appearance
        engines = [engine for engine, where in placement.items() if where == device]
        lines: list[PlanLine] = []
        for engine in engines:
            kind = _kind(engine)
            for part in weights.get(kind, ()):
                if not part.files:
                    logger.warning("%s %s: no safetensors files, so its weights are not in the memory plan",
                                   engine, part.component)
                size = weight_bytes(parameter_counts(part), dtype)
                if kind == "ar":
                    size = -(-size // ar_model_parts)  # a rank's share, rounded up
                lines.append(PlanLine(engine, f"weights {part.component}", size))
            if kind == "ar":
                lines.append(PlanLine(engine, "KV cache", kv_cache_bytes))
            if kind == "flow":
                lines.append(PlanLine(engine, "cache", cache_bytes))
        free = memory(device)
        # On the host, processes need no CUDA context and the memory's owner is the OS: no headroom.
        headroom = HEADROOM_PER_ENGINE * len(engines) if device.startswith("cuda") else 0
        for flow in (engine for engine in engines if _kind(engine) == "flow"):  # one per device
            activations = flow_memory_bytes
            if activations is None:
                left = free.free - sum(line.bytes for line in lines) - headroom
                activations = default_share(device, left)
            lines.append(PlanLine(flow, "activations", activations))
        devices.append(DevicePlan(device, free, tuple(lines), headroom))
    return MemoryPlan(tuple(devices))


def placement_of(capabilities: Capabilities, device: str, flow_devices: Sequence[str] = (),
                 ar_devices: Sequence[str] = ()) -> dict[str, str]:
    """Engine → device, for the engines a family's capabilities call for.

    vLLM's ranks are on ``ar_devices`` (default: one on ``device``), named "ar", "ar.1", …; the
    flow workers on ``flow_devices`` (default: one on ``device``), named "flow", "flow.1", ….
    """
    placement = {}
    if capabilities.understand:
        for index, where in enumerate(ar_devices or (device,)):
            placement["ar" if index == 0 else f"ar.{index}"] = where
    if capabilities.generate or capabilities.edit:
        for index, where in enumerate(flow_devices or (device,)):
            placement["flow" if index == 0 else f"flow.{index}"] = where
    return placement


def _kind(engine: str) -> str:
    """What an engine of the placement runs: "flow.1", the second flow worker, is a "flow"."""
    return engine.partition(".")[0]


def plan_for(config: EngineConfig, adapter: FamilyAdapter, memory: Callable[[str], DeviceMemory] | None = None,
             *, dtype: str = "auto") -> MemoryPlan:
    """The plan of the engines ``build_orchestrator`` starts for ``adapter``, from ``config``'s settings."""
    flow_gib = config.flow_memory_gib
    return plan_memory(
        adapter.weight_files(),
        placement_of(adapter.capabilities(), config.device, flow_devices(config), ar_devices(config)),
        memory or device_memory,  # looked up now, so that tests can replace device_memory
        kv_cache_bytes=int(config.kv_cache_gib * GIB),
        flow_memory_bytes=None if flow_gib is None else int(flow_gib * GIB),
        cache_bytes=int(config.flow_cache_gib * GIB),
        dtype=dtype,
        # On CPU the ranks share the host: the whole model, once, is the estimate.
        ar_model_parts=1 if config.device == "cpu" else config.tensor_parallel_size * config.pipeline_parallel_size,
    )


def apply_plan(config: EngineConfig, adapter: FamilyAdapter,
               memory: Callable[[str], DeviceMemory] | None = None) -> EngineConfig:
    """Plan the engines' memory before they start; returns ``config`` as the engines should get it.

    On a GPU: raise :class:`MemoryPlanError` when the plan does not fit (or cannot be made),
    and fix the flow worker's activation budget in the config when no setting gives it, so
    that it no longer depends on which engine starts first. On CPU the plan is only logged:
    host memory is shared with the OS, its page cache (the weights are memory-mapped) and
    other processes, and is not taken up front the way a GPU's is, so an estimate is no
    ground to refuse a start that works today.
    """
    on_gpu = config.device.startswith("cuda")
    try:
        # config.dtype is the serving dtype both engines cast their weights to (resolved).
        plan = plan_for(config, adapter, memory, dtype=config.dtype)
    except MemoryPlanError:
        raise
    except (OSError, ValueError) as exc:
        if on_gpu:
            raise MemoryPlanError(f"cannot plan device memory: {exc}") from exc
        logger.warning("no memory plan (%s)", exc)
        return config
    for device in plan.devices:
        logger.info("memory plan%s %s", "" if on_gpu else " (an estimate, not enforced on CPU)", device.describe())
    if not on_gpu:
        return config
    plan.check()
    shares = [line.bytes for device in plan.devices for line in device.lines if line.component == "activations"]
    if shares and config.flow_memory_gib is None:
        # One budget for every flow worker: the smallest device's share.
        return dataclasses.replace(config, flow_memory_gib=min(shares) / GIB)
    return config


def device_memory(device: str) -> DeviceMemory:
    """Free and total bytes of ``device`` now: the host's available memory for "cpu".

    A GPU is asked from a short-lived child process: ``torch.cuda.mem_get_info`` creates a
    CUDA context, which in the gateway would hold device memory for the server's lifetime
    and make vLLM fall back from fork to spawn.
    """
    if not device.startswith("cuda"):
        return DeviceMemory(host_available_bytes(), os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    try:
        with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
            free, total = pool.submit(_cuda_mem_get_info, device).result(timeout=120)
    except Exception as exc:  # whatever torch raises without a usable GPU (AssertionError among them)
        raise MemoryPlanError(f"cannot read the free memory of {device}: {type(exc).__name__}: {exc}") from exc
    return DeviceMemory(free, total)


def _cuda_mem_get_info(device: str) -> tuple[int, int]:
    import torch

    free, total = torch.cuda.mem_get_info(torch.device(device))
    return int(free), int(total)


def _gib(size: int) -> str:
    return f"{size / GIB:.2f}"
