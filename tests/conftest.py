from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--run-slow", action="store_true", default=False, help="run tests marked slow")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--run-slow"):
        return
    skip = pytest.mark.skip(reason="slow: run with --run-slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


TinyCheckpoint = Callable[..., Path]


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> TinyCheckpoint:
    """``tiny_checkpoint(family, seed=0)``: the tiny random checkpoint of a family, written once a session.

    Families are those of ``diptych make-tiny`` (the model registry's ``TINY_FACTORIES``). The
    directory is shared by every test that asks for the same family and seed, so a test must
    not change it: copy it first.
    """
    from diptych.models.registry import TINY_FACTORIES, load_target

    written: dict[tuple[str, int], Path] = {}

    def get(family: str, seed: int = 0) -> Path:
        if (family, seed) not in written:
            out = tmp_path_factory.mktemp(f"tiny-{family}-{seed}") / f"tiny-{family}"
            written[family, seed] = load_target(TINY_FACTORIES[family])(out, seed=seed)
        return written[family, seed]

    return get
