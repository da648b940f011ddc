"""Which waiting requests join the flow worker's running batch at a step boundary.

FIFO with backfill and aging. Requests are considered in arrival order and admitted while
the batch stays within its token and memory budget. A request that does not fit may be
overtaken by later, smaller ones that do (backfill keeps the batch full), but only
``max_overtakes`` times: after that nothing more is admitted ahead of it, the running
batch drains as its jobs finish, and it gets in. A request larger than the whole budget
runs alone once the batch is empty. So no request starves, and the order of arrival is
kept except where keeping it would leave the batch idle.

Pure functions over plain values, so the policy is tested without a model.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from diptych.models.base import FlowCost

logger = logging.getLogger(__name__)

_GIB = 1 << 30


@dataclass(frozen=True)
class BatchBudget:
    """Limits of the running batch, summed over active requests."""

    max_tokens: int = 32768
    max_memory_bytes: int = 4 * _GIB
    max_requests: int = 64
    max_overtakes: int = 4

    def __post_init__(self) -> None:
        for name in ("max_tokens", "max_memory_bytes", "max_requests"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_overtakes < 0:
            raise ValueError(f"max_overtakes must be >= 0, got {self.max_overtakes}")


class Candidate(Protocol):
    cost: FlowCost
    overtaken: int


def select(waiting: Sequence[Candidate], active: Sequence[FlowCost], budget: BatchBudget) -> list[int]:
    """Indices (into ``waiting``, which is in arrival order) of the requests to admit now.

    Increments ``overtaken`` of every request left waiting ahead of an admitted one.
    """
    used = sum(active, FlowCost(0, 0))
    count = len(active)
    chosen: list[int] = []
    passed_over: list[int] = []
    for index, candidate in enumerate(waiting):
        if count >= budget.max_requests:
            break
        total = used + candidate.cost
        fits = total.tokens <= budget.max_tokens and total.memory_bytes <= budget.max_memory_bytes
        if fits or count == 0:  # count == 0: an oversized request runs alone rather than never
            chosen.append(index)
            used, count = total, count + 1
            continue
        passed_over.append(index)
        if candidate.overtaken >= budget.max_overtakes:
            break  # aged: admit nothing more ahead of it
    if chosen:
        last = chosen[-1]
        for index in passed_over:
            if index < last:
                waiting[index].overtaken += 1
    return chosen


def default_budget(device: str, memory_gib: float | None = None) -> BatchBudget:
    """The worker's budget: ``memory_gib`` of activations when given (setting ``flow_memory_gib``,
    or the memory plan's share on a GPU), else a share of what the device has free now."""
    if memory_gib is not None:
        return BatchBudget(max_memory_bytes=max(int(memory_gib * _GIB), 1))
    memory = BatchBudget().max_memory_bytes
    try:
        if device.startswith("cuda"):
            import torch

            free, _total = torch.cuda.mem_get_info(torch.device(device))
        else:
            free = host_available_bytes()
        memory = default_share(device, free)
    except (OSError, RuntimeError, ValueError) as exc:
        logger.warning("could not read free memory on %s (%s); memory budget %d bytes", device, exc, memory)
    return BatchBudget(max_memory_bytes=max(memory, 1))


def default_share(device: str, free: int) -> int:
    """The activation budget the flow worker takes of ``free`` bytes when none is set.

    Half of a GPU's: the rest is slack for what the estimates miss (allocator fragmentation,
    cached prompt embeddings). A quarter of the host's: the host's memory is everyone's.
    """
    return max(free, 0) // (2 if device.startswith("cuda") else 4)


def host_available_bytes() -> int:
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
