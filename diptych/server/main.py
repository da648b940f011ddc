"""``diptych serve``: settings → checkpoint → engine → app → uvicorn."""

from __future__ import annotations

import logging
import signal
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI

from diptych.server.shutdown import Drain, DrainingServer
from diptych.settings import Settings

logger = logging.getLogger(__name__)


def resolve_model_dir(settings: Settings) -> Path:
    """The checkpoint to serve: ``--model``, or the embedded default model."""
    if settings.model is not None:
        if not settings.model.is_dir():
            raise SystemExit(f"--model {settings.model}: no such directory")
        return settings.model.resolve()
    from diptych.models.default import default_checkpoint

    return default_checkpoint()


def serve(overrides: dict[str, Any]) -> int:
    settings = Settings(**overrides)
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    from diptych.engine.devices import DeviceError, check_device, resolve_dtype
    from diptych.engine.memory_plan import MemoryPlanError
    from diptych.engine.orchestrator import build_orchestrator
    from diptych.engine.parallel import check_parallel
    from diptych.models.registry import load_adapter
    from diptych.server.app import create_app

    model_dir = resolve_model_dir(settings)
    served_name = settings.served_model_name or model_dir.name
    adapter = load_adapter(model_dir)
    config = settings.engine_config(model_dir, served_name)
    try:
        check_device(settings.device, resolve_dtype(settings.dtype, settings.device, adapter.checkpoint_dtype()))
        check_parallel(config)
    except DeviceError as exc:
        raise SystemExit(f"diptych serve: {exc}") from None
    try:
        engine = build_orchestrator(config, adapter, log_level=settings.log_level)
    except MemoryPlanError as exc:
        raise SystemExit(f"diptych serve: {exc}") from exc  # one line, exit status 1, nothing started
    drain = Drain()
    app = create_app(engine, settings, drain=drain)
    logger.info("serving %s (%s) on http://%s:%s", served_name, adapter.family, settings.host, settings.port)
    run_app(app, settings, drain)
    return 0


def run_app(app: FastAPI, settings: Settings, drain: Drain) -> None:
    """Serve ``app`` until SIGTERM or SIGINT, then drain (see shutdown.py) and stop."""
    # uvicorn re-raises the stopping signal once it has shut down, through the handler that was
    # installed before it. A graceful stop is a success: exit 0, as orchestrators expect.
    # SIGINT too (Ctrl+C): otherwise asyncio's runner turns it into KeyboardInterrupt after the drain.
    for stop in (signal.SIGTERM, signal.SIGINT):
        signal.signal(stop, lambda sig, _: logger.info("stopped by %s after a graceful shutdown",
                                                        signal.Signals(sig).name))
    # The drain has already waited for requests in flight; uvicorn's own wait is only a backstop.
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_level=settings.log_level,
                            timeout_graceful_shutdown=10)
    DrainingServer(config, drain, settings.shutdown_timeout_s).run()
