"""Start ``diptych serve`` as a real process on a free loopback port, wait for health, stop it.

Shared by the benchmarks and the end-to-end tests: both measure a server the way a user
runs it, over real HTTP.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

logger = logging.getLogger(__name__)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class ServerProcess:
    """A server this process started, or (``process`` None) one it was pointed at."""

    process: subprocess.Popen[bytes] | None
    base_url: str
    log_path: Path | None = None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:] if self.log_path else ""

    def stop(self, timeout_s: float = 60) -> int | None:
        """SIGTERM, then the whole process group (vLLM's processes too) if it does not stop in time."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                logger.warning("server %s did not stop in %ss; killing its group", self.process.pid, timeout_s)
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)
        return self.process.returncode


def start_server(model_dir: Path | None, work_dir: Path, *args: str, startup_timeout_s: float = 420,
                 poll_s: float = 1.0, env: Mapping[str, str] | None = None) -> ServerProcess:
    """``diptych serve --model model_dir`` (None: the embedded default model) with ``args``.

    Its log and cache go under ``work_dir``; ``/health`` is asked every ``poll_s`` until it is ok.
    ``env`` adds to (or replaces in) the environment it inherits, e.g. ``OMP_NUM_THREADS``.
    """
    port = free_port()
    log_path = work_dir / f"server-{port}.log"
    model = ("--model", str(model_dir)) if model_dir is not None else ()
    command = [
        sys.executable, "-m", "diptych.cli", "serve", *model, "--host", "127.0.0.1",
        "--port", str(port), "--cache-dir", str(work_dir / "cache"), "--kv-cache-gib", "0.5", *args,
    ]
    # The caller's DIPTYCH_* variables would change the server under test.
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("DIPTYCH_")}
    with log_path.open("wb") as log:
        # Its own session: a stuck server is killed with its whole group.
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env={**inherited, **(env or {})},
                                   start_new_session=True)
    server = ServerProcess(process, f"http://127.0.0.1:{port}", log_path)
    deadline = time.monotonic() + startup_timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode} during start-up:\n{server.log()}")
        try:
            if httpx.get(f"{server.base_url}/health", timeout=2).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(poll_s)
    server.stop()
    raise RuntimeError(f"server not healthy after {startup_timeout_s}s:\n{server.log()}")


@contextmanager
def serving(model_dir: Path | None, work_dir: Path, *args: str) -> Iterator[ServerProcess]:
    """``start_server`` for a ``with`` block, stopped on leaving it.

    Leaving normally, a server that does not exit 0 on SIGTERM raises: a clean shutdown is
    part of what the tests and benchmarks that use this check.
    """
    server = start_server(model_dir, work_dir, *args)
    try:
        yield server
    except BaseException:
        server.stop()
        raise
    code = server.stop()
    if code != 0:
        raise RuntimeError(f"server exited with {code} on SIGTERM:\n{server.log()}")
