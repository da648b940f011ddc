from __future__ import annotations

import argparse
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

from diptych.cli import BENCHES, build_parser, main
from diptych.models.registry import TINY_FACTORIES
from diptych.settings import Settings


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


def _serve_settings(argv: list[str]) -> Settings:
    """The settings ``diptych serve argv`` would run with (the same mapping as cli._serve)."""

    args = build_parser().parse_args(["serve", *argv])
    return Settings(**{k: v for k, v in vars(args).items() if k not in {"command", "func"} and v is not None})


def test_every_serve_flag_names_a_setting() -> None:
    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    dests = {a.dest for a in commands.choices["serve"]._actions if a.dest != "help"}
    assert dests <= set(Settings.model_fields), dests - set(Settings.model_fields)


def test_shutdown_and_remote_image_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DIPTYCH_REMOTE_IMAGE_MAX_BYTES", "4096")
    settings = _serve_settings([
        "--shutdown-timeout", "7.5", "--remote-image-host", "Images.Example.com", "--remote-image-host", "*.cdn.test",
        "--remote-image-timeout", "2", "--remote-image-max-redirects", "1",
    ])
    assert settings.shutdown_timeout_s == 7.5
    assert settings.remote_image_hosts == ("images.example.com", "*.cdn.test")
    assert (settings.remote_image_timeout_s, settings.remote_image_max_redirects) == (2.0, 1)
    assert settings.remote_image_max_bytes == 4096  # the environment, where no flag is given
    assert _serve_settings(["--remote-image-max-bytes", "8192"]).remote_image_max_bytes == 8192  # a flag wins
    defaults = _serve_settings([])
    assert defaults.shutdown_timeout_s == 30.0 and defaults.remote_image_hosts == ()


def test_bad_shutdown_and_remote_image_flags_are_errors() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="shutdown_timeout_s"):
        _serve_settings(["--shutdown-timeout", "-1"])
    with pytest.raises(ValidationError, match="https://evil.test"):
        _serve_settings(["--remote-image-host", "https://evil.test"])
