"""``--dtype auto`` per device, and the start-up check of device and dtype."""

from __future__ import annotations

import logging
import subprocess
import sys
import time

import pytest
import torch

from diptych.engine import devices
from diptych.engine.devices import DeviceError, check_device, resolve_dtype


@pytest.mark.parametrize(("setting", "device", "declared", "resolved"), [
    ("auto", "cuda", "bfloat16", "bfloat16"),  # the checkpoint's own dtype on a GPU
    ("auto", "cuda", None, "float32"),
    ("auto", "cpu", "bfloat16", "float32"),  # full precision on CPU
    ("auto", "cpu", "float16", "float32"),
    ("bfloat16", "cpu", "float32", "bfloat16"),  # an explicit setting is taken as it is
    ("float16", "cuda", "bfloat16", "float16"),
])
def test_auto_follows_the_device(setting: str, device: str, declared: str | None, resolved: str) -> None:
    assert resolve_dtype(setting, device, declared) == resolved


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a host without a GPU")
def test_cuda_without_a_gpu_is_refused_by_name() -> None:
    with pytest.raises(DeviceError, match="--device cuda"):
        check_device("cuda", "float32")


def test_an_unknown_dtype_is_refused() -> None:
    with pytest.raises(DeviceError, match="float8"):
        check_device("cpu", "float8")


@pytest.mark.parametrize(("native", "warned"), [(True, False), (False, True)])
def test_half_precision_on_cpu_warns_only_without_native_bf16(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, native: bool, warned: bool
) -> None:
    monkeypatch.setattr(devices, "_cpu_has_native_bf16", lambda: native)
    with caplog.at_level(logging.WARNING, logger=devices.__name__):
        check_device("cpu", "bfloat16")
        check_device("cpu", "float32")  # never warned
    assert ("emulated" in caplog.text) is warned


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a host without a GPU")
def test_serve_on_a_missing_gpu_exits_at_once_with_one_line(tmp_path) -> None:
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "diptych.cli", "serve", "--device", "cuda", "--port", "0",
                             "--cache-dir", str(tmp_path)], capture_output=True, text=True, timeout=120)
    elapsed = time.monotonic() - started
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("diptych serve: --device cuda:"), result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert elapsed < 30, elapsed  # no engine was started
