"""Entry point of the flow-decoder worker process: it owns its device and the family's runner."""

from __future__ import annotations

import logging
import multiprocessing.connection
import os
import threading
from pathlib import Path
from typing import Any

from diptych.engine.flow_budget import default_budget
from diptych.engine.flow_messages import Fatal, Ready
from diptych.engine.flow_scheduler import FlowScheduler

logger = logging.getLogger(__name__)

# What ps/top show for this process (the kernel keeps 15 characters), so operators and
# the flow benchmark can tell it from the gateway and vLLM's processes.
PROCESS_NAME = "diptych-flow"


def worker_main(
    model_dir: str, device: str, dtype: str, inbox: Any, outbox: Any, log_level: str = "INFO",
    memory_gib: float | None = None, cache_gib: float = 0.0, cpus: tuple[int, ...] | None = None,
    visible_devices: str | None = None,
) -> None:
    """``inbox``: a multiprocessing queue of :data:`Inbound`; ``outbox``: the write end of a pipe.

    ``memory_gib``: the activation budget (see :func:`default_budget`); None, a share of what is free.
    ``cache_gib``: what the runner may keep across requests for reuse.
    ``cpus``: the CPUs this worker may use, one thread on each (workers sharing a host split its
    cores); None: all of them, with torch's own thread count.
    ``visible_devices``: the server's own ``CUDA_VISIBLE_DEVICES`` (None: unset), which ``device``
    is numbered in; the gateway's may since have been narrowed to vLLM's GPUs (``--ar-device``).
    """
    if visible_devices is None:
        os.environ.pop("CUDA_VISIBLE_DEVICES", None)
    else:
        os.environ["CUDA_VISIBLE_DEVICES"] = visible_devices
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s flow-worker %(levelname)s %(message)s")
    _name_process(PROCESS_NAME)
    _exit_with_parent()
    if cpus is not None:
        import torch

        os.sched_setaffinity(0, cpus)
        torch.set_num_threads(len(cpus))
    try:
        from diptych.engine.devices import resolve_dtype
        from diptych.models.registry import load_adapter

        adapter = load_adapter(Path(model_dir))
        runner = adapter.build_flow_runner(device, resolve_dtype(dtype, device, adapter.checkpoint_dtype()),
                                           cache_bytes=int(cache_gib * (1 << 30)))
    except Exception as exc:
        logger.exception("flow worker failed to load %s", model_dir)
        outbox.send(Fatal(f"{type(exc).__name__}: {exc}"))
        return
    budget = default_budget(device, memory_gib)  # after loading: the weights are not free memory
    logger.info("flow worker budget: %s", budget)
    outbox.send(Ready(budget.max_memory_bytes))
    FlowScheduler(runner, outbox.send, budget).run(inbox)
    logger.info("flow worker stopped")


def _name_process(name: str) -> None:
    try:
        with open("/proc/self/comm", "w") as comm:  # Linux: the main thread's name is the process name
            comm.write(name[:15])
    except OSError:
        logger.debug("cannot set the process name on this platform")


def _exit_with_parent() -> None:
    """Exit when the gateway dies (even by SIGKILL) instead of lingering with the device."""
    parent = multiprocessing.parent_process()
    if parent is None:
        return

    def watch() -> None:
        multiprocessing.connection.wait([parent.sentinel])
        os._exit(1)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()
