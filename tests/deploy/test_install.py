"""`make install`'s choice of where torch comes from, and of which torch companions it keeps.

The choice is made by ``deploy/torch_wheels.py`` with pip itself (``--no-index``), so these tests
run it against wheel directories made here, with the machine's pip configuration switched off:
no network is touched in either situation.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "deploy" / "torch_wheels.py"


def load_script():  # noqa: ANN201 - a module loaded from a file outside the package
    spec = importlib.util.spec_from_file_location("torch_wheels", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


torch_wheels = load_script()
CPU_PIN = torch_wheels.torch_requirement("cpu")


def write_wheel(directory: Path, name: str, version: str) -> Path:
    """A minimal valid wheel: enough for pip to resolve it, nothing to import."""
    info = f"{name}-{version}.dist-info"
    path = directory / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as wheel:
        wheel.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        wheel.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        wheel.writestr(f"{info}/RECORD", "")
    return path


def index_args(wheel_dir: Path, *extra_args: str, torch_index_url: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_") and k != "TORCH_INDEX_URL"}
    # No pip.conf, no index: the only source pip may look at is the directory given here.
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_FIND_LINKS=str(wheel_dir), PIP_DISABLE_PIP_VERSION_CHECK="1")
    if torch_index_url is not None:
        env["TORCH_INDEX_URL"] = torch_index_url
    return subprocess.run([sys.executable, str(SCRIPT), "index-args", *extra_args], env=env,
                          capture_output=True, text=True, check=False, timeout=120)


def test_the_cpu_extra_pins_a_cpu_build_of_torch_and_the_cuda_extra_a_plain_one() -> None:
    assert re.fullmatch(r"torch==[\d.]+\+cpu", CPU_PIN)
    cuda_pin = torch_wheels.torch_requirement("cuda")
    assert cuda_pin == CPU_PIN.removesuffix("+cpu")  # the same torch on both kinds of host
    with pytest.raises(ValueError, match="no extra 'rocm'"):
        torch_wheels.torch_requirement("rocm")


def test_local_wheels_holding_torch_need_no_index(tmp_path: Path) -> None:
    write_wheel(tmp_path, "torch", CPU_PIN.split("==")[1])
    result = index_args(tmp_path, "cpu")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == []


def test_without_local_torch_the_pytorch_cpu_index_is_added(tmp_path: Path) -> None:
    write_wheel(tmp_path, "torch", "2.0.0")  # a torch, but not the pinned build
    result = index_args(tmp_path, "cpu")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["--extra-index-url", torch_wheels.DEFAULT_TORCH_INDEX_URL]


def test_a_mirror_of_the_pytorch_index_replaces_it(tmp_path: Path) -> None:
    mirror = "https://mirror.example/pytorch-cpu/simple"
    assert index_args(tmp_path, "cpu", torch_index_url=mirror).stdout.split() == ["--extra-index-url", mirror]
    # A container build passes TORCH_INDEX_URL through empty when it is not given.
    default = index_args(tmp_path, "cpu", torch_index_url="").stdout.split()
    assert default == ["--extra-index-url", torch_wheels.DEFAULT_TORCH_INDEX_URL]


def test_cuda_hosts_take_torch_and_vllm_from_the_default_index(tmp_path: Path) -> None:
    result = index_args(tmp_path, "cuda")
    assert result.returncode == 0 and result.stdout.split() == []


def test_prune_removes_exactly_the_companions_that_do_not_import(monkeypatch: pytest.MonkeyPatch) -> None:
    present = {"torchvision": True, "torchaudio": True, "torchcodec": False}
    importable = {"torchvision": True, "torchaudio": False}
    removed: list[list[str]] = []
    monkeypatch.setattr(torch_wheels, "installed", lambda name, python=None: present[name])
    monkeypatch.setattr(torch_wheels, "imports", lambda name, python=None: importable[name])
    monkeypatch.setattr(torch_wheels.subprocess, "run", lambda command, check: removed.append(command))
    assert torch_wheels.prune() == ["torchaudio"]
    assert removed and removed[0][-1] == "torchaudio" and "uninstall" in removed[0]


def test_this_install_has_no_companion_that_breaks_torch() -> None:
    for name in torch_wheels.COMPANIONS:
        if torch_wheels.installed(name):
            assert torch_wheels.imports(name), f"{name} is installed but does not import beside torch"
