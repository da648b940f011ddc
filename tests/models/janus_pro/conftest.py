"""A tiny Janus-Pro checkpoint, once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from diptych.models.janus_pro.tiny import write_tiny_janus_pro


@pytest.fixture(scope="session")
def tiny_janus_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_janus_pro(tmp_path_factory.mktemp("janus_pro") / "tiny-janus-pro", seed=0)
