from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from diptych.bench.server_process import ServerProcess, serving
from tests.conftest import TinyCheckpoint


@pytest.fixture(scope="session")
def edit_checkpoint(tiny_checkpoint: TinyCheckpoint) -> Path:
    return tiny_checkpoint("qwen-image-edit")


@pytest.fixture(scope="session")
def server(edit_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One server on the tiny edit checkpoint for the whole session (vLLM start-up is ~35 s)."""
    with serving(edit_checkpoint, tmp_path_factory.mktemp("server"), "--queue-depth", "16", "--max-steps", "1000") as process:
        yield process
