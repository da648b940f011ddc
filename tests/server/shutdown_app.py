"""A real server process over the scripted FakeEngine, run by test_shutdown_process.py.

It goes through the same ``run_app`` as ``diptych serve`` (uvicorn with the drain in front
of its shutdown), so signals, sockets and the exit code are real; only the engine is scripted.
"""

from __future__ import annotations

import argparse
import logging

from diptych.server.app import create_app
from diptych.server.main import run_app
from diptych.server.shutdown import Drain
from diptych.settings import Settings
from tests.server.fake_engine import FakeEngine


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--step-delay", type=float, required=True, help="seconds per scripted denoising step")
    parser.add_argument("--shutdown-timeout", type=float, required=True)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    settings = Settings(port=args.port, shutdown_timeout_s=args.shutdown_timeout, log_level="info")
    drain = Drain()
    app = create_app(FakeEngine(delay_s=args.step_delay), settings, drain=drain)
    run_app(app, settings, drain)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
