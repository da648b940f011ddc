"""What vLLM's engine core reports about its scheduler, kept for health, metrics and tests.

vLLM sends scheduler statistics from the engine-core process with each batch of outputs
and hands them to every stat logger; a small logger of ours keeps the latest values.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass
class SchedulerLoad:
    """The engine core's scheduler at its last reported step (mutated by the stat logger)."""

    running: int = 0
    waiting: int = 0
    kv_cache_usage: float = 0.0
    steps_reported: int = 0
    updated_at: float = 0.0


def scheduler_load_logger(sink: SchedulerLoad) -> Callable[[Any, int], Any]:
    """A vLLM stat-logger factory whose loggers write into ``sink``."""
    from vllm.v1.metrics.loggers import StatLoggerBase

    class _SchedulerLoadLogger(StatLoggerBase):
        def __init__(self, vllm_config: Any, engine_index: int = 0) -> None:
            self._engine_index = engine_index

        def record(
            self,
            scheduler_stats: Any,
            iteration_stats: Any,
            mm_cache_stats: Any = None,
            engine_idx: int = 0,
        ) -> None:
            if scheduler_stats is None:
                return
            sink.running = scheduler_stats.num_running_reqs
            sink.waiting = scheduler_stats.num_waiting_reqs
            sink.kv_cache_usage = scheduler_stats.kv_cache_usage
            sink.steps_reported += 1
            sink.updated_at = time.monotonic()

        def log_engine_initialized(self) -> None:
            pass

    return _SchedulerLoadLogger
