"""The package's layers import one way: bench → cli → server → engine → models → kernels → ground.

Every import counts, also those inside functions: a lazy import is still a dependency. Family
names stay inside ``diptych/models``.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "diptych"
# Higher layers may import lower ones, never the other way round. The ground holds values,
# settings and compatibility shims that every layer shares.
LAYERS = {
    "types": 0, "settings": 0, "compat": 0,
    "kernels": 1,
    "models": 2,
    "engine": 3,
    "server": 4,
    "cli": 5,
    "bench": 6,
}
FAMILY_NAMES = re.compile(r"janus|qwen|gemma|bagel|show-?o\d", re.I)


def layer_of(module: str) -> str:
    parts = module.split(".")
    assert parts[0] == "diptych", module
    return parts[1] if len(parts) > 1 else "diptych"


def imports(path: Path) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "diptych":
                found += [(node.lineno, f"diptych.{alias.name}") for alias in node.names]
            else:
                found.append((node.lineno, node.module))
    return [(line, name) for line, name in found if name.split(".")[0] == "diptych"]


def source_files() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def module_of(path: Path) -> str:
    return ".".join(("diptych", *path.relative_to(PACKAGE).with_suffix("").parts)).removesuffix(".__init__")


def test_every_module_belongs_to_a_layer() -> None:
    unplaced = {layer_of(module_of(p)) for p in source_files()} - set(LAYERS) - {"__init__", "diptych"}
    assert not unplaced, f"place these in LAYERS: {sorted(unplaced)}"


def test_imports_never_run_up_the_layers() -> None:
    upward = []
    for path in source_files():
        here = layer_of(module_of(path))
        if here not in LAYERS:
            continue
        for line, name in imports(path):
            there = layer_of(name)
            if there in LAYERS and LAYERS[there] > LAYERS[here]:
                upward.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports {name}")
    assert not upward, "\n".join(upward)


@pytest.mark.parametrize("layer", ["types", "settings", "kernels", "engine", "server", "cli"])
def test_no_family_is_named_outside_models(layer: str) -> None:
    paths = [PACKAGE / f"{layer}.py"] if (PACKAGE / f"{layer}.py").exists() else sorted((PACKAGE / layer).rglob("*.py"))
    named = [f"{p.relative_to(PACKAGE.parent)}:{n}: {line.strip()}" for p in paths
             for n, line in enumerate(p.read_text().splitlines(), 1) if FAMILY_NAMES.search(line)]
    assert not named, "\n".join(named)
