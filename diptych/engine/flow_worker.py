"""Entry point of the flow-decoder worker process: it owns its device and the family's runner."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from diptych.engine.flow_messages import Fatal, Ready
from diptych.engine.flow_scheduler import FlowScheduler

logger = logging.getLogger(__name__)


def worker_main(model_dir: str, device: str, inbox: Any, outbox: Any, log_level: str = "INFO") -> None:
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s flow-worker %(levelname)s %(message)s")
    try:
        from diptych.models.registry import load_adapter

        runner = load_adapter(Path(model_dir)).build_flow_runner(device)
    except Exception as exc:
        logger.exception("flow worker failed to load %s", model_dir)
        outbox.put(Fatal(f"{type(exc).__name__}: {exc}"))
        return
    outbox.put(Ready())
    FlowScheduler(runner, outbox.put).run(inbox)
    logger.info("flow worker stopped")
