"""``serving``: the server is stopped however its block ends, and an unclean exit is an error.

A real process stands in for the server (``start_server`` would take a vLLM start-up):
``sys.exit`` with a chosen code on SIGTERM, as a server that failed to shut down cleanly does.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from diptych.bench import server_process
from diptych.bench.server_process import ServerProcess, serving

EXIT_ON_SIGTERM = ("import signal, sys, time; signal.signal(signal.SIGTERM, lambda *_: sys.exit({code})); "
                   "print('ready', flush=True); time.sleep(60)")


def _fake_start(code: int, started: list[ServerProcess]):  # type: ignore[no-untyped-def]
    def start(model_dir: Path | None, work_dir: Path, *args: str) -> ServerProcess:
        process = subprocess.Popen([sys.executable, "-c", EXIT_ON_SIGTERM.format(code=code)], stdout=subprocess.PIPE)
        assert process.stdout is not None and process.stdout.readline() == b"ready\n"  # its handler is in place
        log = work_dir / "server.log"
        log.write_text("the fake server's log\n")
        started.append(ServerProcess(process, "http://127.0.0.1:9", log))
        return started[-1]

    return start


def test_a_clean_exit_passes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    started: list[ServerProcess] = []
    monkeypatch.setattr(server_process, "start_server", _fake_start(0, started))
    with serving(None, tmp_path) as server:
        assert server.process is not None and server.process.poll() is None
    assert started[0].process is not None and started[0].process.returncode == 0


def test_an_unclean_exit_raises_with_the_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    started: list[ServerProcess] = []
    monkeypatch.setattr(server_process, "start_server", _fake_start(3, started))
    with pytest.raises(RuntimeError, match="exited with 3 on SIGTERM:\n.*the fake server's log"), serving(None, tmp_path):
        pass


def test_an_error_in_the_block_stops_the_server_and_propagates(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    started: list[ServerProcess] = []
    monkeypatch.setattr(server_process, "start_server", _fake_start(3, started))
    with pytest.raises(KeyError), serving(None, tmp_path):
        raise KeyError("the test failed")
    assert started[0].process is not None and started[0].process.returncode == 3
