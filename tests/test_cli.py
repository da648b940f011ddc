from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

from diptych.cli import BENCHES, TINY_FACTORIES, build_parser, main


@pytest.mark.parametrize("name", sorted(BENCHES))
def test_every_bench_module_has_the_interface(name: str) -> None:
    module = importlib.import_module(BENCHES[name])
    assert callable(module.add_arguments) and callable(module.run)


def test_bench_help_needs_no_bench_import() -> None:
    result = subprocess.run([sys.executable, "-m", "diptych.cli", "--help"], capture_output=True, text=True,
                            check=True)
    assert "serve" in result.stdout and "make-tiny" in result.stdout and "bench" in result.stdout


def test_make_tiny_writes_a_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert set(TINY_FACTORIES) >= {"qwen-image", "qwen-image-edit"}
    assert main(["make-tiny", "qwen-image", str(tmp_path / "t")]) == 0
    assert (tmp_path / "t" / "model_index.json").is_file()
    assert capsys.readouterr().out.strip() == str(tmp_path / "t")


def test_serve_flags_map_to_settings_names() -> None:
    args = build_parser().parse_args(["serve", "--model", "m", "--api-key", "a", "--api-key", "b",
                                      "--request-timeout", "5", "--queue-depth", "2"])
    assert (args.model, args.api_keys, args.request_timeout_s, args.queue_depth) == ("m", ["a", "b"], 5.0, 2)
