"""The tiny Janus-Pro checkpoint under the name this package's tests use."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import TinyCheckpoint


@pytest.fixture(scope="session")
def tiny_janus_dir(tiny_checkpoint: TinyCheckpoint) -> Path:
    return tiny_checkpoint("janus-pro")
