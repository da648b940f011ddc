from __future__ import annotations

import argparse
import importlib
import re
import subprocess
import sys
from pathlib import Path

import pytest

from diptych.cli import BENCHES, add_setting_flags, build_parser, main, serve_overrides, setting_flag
from diptych.models.registry import TINY_FACTORIES
from diptych.settings import Settings, env_var


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


def _serve_actions() -> list[argparse.Action]:
    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return [a for a in commands.choices["serve"]._actions if a.dest != "help"]


def test_every_setting_has_one_flag_with_help() -> None:
    actions = _serve_actions()
    assert sorted(a.dest for a in actions) == sorted(Settings.model_fields)
    for action in actions:
        flag = setting_flag(action.dest, Settings.model_fields[action.dest])
        # A repeatable flag names one item, and answers to its plural too (--flow-devices cpu,cpu).
        assert action.option_strings == ([flag, flag + "s"] if isinstance(action, argparse._AppendAction) else [flag])
        assert action.help and env_var(action.dest) in action.help


# Every flag `serve` had before its flags were generated, an example value, and what it parsed to then.
OLD_FLAGS = [
    ("--model", "m", "model", "m"),
    ("--served-model-name", "tiny", "served_model_name", "tiny"),
    ("--host", "0.0.0.0", "host", "0.0.0.0"),
    ("--port", "9000", "port", 9000),
    ("--device", "cuda", "device", "cuda"),
    ("--api-key", "k", "api_keys", ["k"]),
    ("--cache-dir", "/tmp/c", "cache_dir", "/tmp/c"),
    ("--queue-depth", "2", "queue_depth", 2),
    ("--request-timeout", "5", "request_timeout_s", 5.0),
    ("--kv-cache-gib", "0.5", "kv_cache_gib", 0.5),
    ("--max-num-seqs", "8", "max_num_seqs", 8),
    ("--max-image-side", "512", "max_image_side", 512),
    ("--max-steps", "20", "max_steps", 20),
    ("--max-n", "2", "max_n", 2),
    ("--max-prompt-tokens", "100", "max_prompt_tokens", 100),
    ("--max-body-bytes", "4096", "max_body_bytes", 4096),
    ("--shutdown-timeout", "7.5", "shutdown_timeout_s", 7.5),
    ("--remote-image-host", "a.test", "remote_image_hosts", ["a.test"]),
    ("--remote-image-max-bytes", "2048", "remote_image_max_bytes", 2048),
    ("--remote-image-timeout", "2", "remote_image_timeout_s", 2.0),
    ("--remote-image-max-redirects", "1", "remote_image_max_redirects", 1),
    ("--log-level", "debug", "log_level", "debug"),
]


@pytest.mark.parametrize(("flag", "value", "dest", "parsed"), OLD_FLAGS, ids=[f[0] for f in OLD_FLAGS])
def test_old_flag_spellings_parse_as_before(flag: str, value: str, dest: str, parsed: object) -> None:
    args = build_parser().parse_args(["serve", flag, value])
    assert getattr(args, dest) == parsed
    assert serve_overrides(args) == {dest: parsed}


def test_flags_added_for_every_setting_reach_the_server(monkeypatch: pytest.MonkeyPatch) -> None:
    import diptych.server.main

    seen: list[dict[str, object]] = []
    monkeypatch.setattr(diptych.server.main, "serve", lambda overrides: seen.append(overrides) or 0)
    argv = ["--max-input-pixels", "4096", "--max-output-tokens", "64", "--max-images-per-request", "2",
            "--max-model-len", "512", "--ar-startup-timeout", "5", "--api-key", "a", "--api-key", "b"]
    assert main(["serve", *argv]) == 0
    assert seen == [{"max_input_pixels": 4096, "max_output_tokens": 64, "max_images_per_request": 2,
                     "max_model_len": 512, "ar_startup_timeout_s": 5.0, "api_keys": ["a", "b"]}]


def test_literal_settings_are_choices() -> None:
    choices = {a.dest: a.choices for a in _serve_actions() if a.choices}
    assert choices == {"device": ["cpu", "cuda"], "log_level": ["debug", "info", "warning", "error"],
                       "ar_compile": ["auto", "eager", "compiled"], "dtype": ["auto", "float32", "bfloat16", "float16"],
                       "distributed_executor_backend": ["mp", "ray"]}


@pytest.mark.parametrize(("argv", "named"), [
    (["--port", "x"], ["--port", "'x'"]),
    (["--device", "tpu"], ["--device", "'tpu'"]),
    (["--queue-depth", "0"], ["--queue-depth", "(got 0)"]),
    (["--request-timeout", "-1"], ["--request-timeout", "(got -1.0)"]),
    (["--remote-image-host", "https://evil.test"], ["--remote-image-host", "https://evil.test"]),
])
def test_a_bad_value_is_an_error_naming_the_flag_and_the_value(
    argv: list[str], named: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as stopped:
        main(["serve", *argv])
    assert stopped.value.code == 2
    error = capsys.readouterr().err.splitlines()[-1]
    assert error.startswith("diptych serve: error:") and all(n in error for n in named), error


def test_a_bad_environment_value_is_an_error_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DIPTYCH_MAX_N", "0")
    with pytest.raises(SystemExit):
        main(["serve"])
    assert "DIPTYCH_MAX_N: Input should be greater than or equal to 1 (got '0')" in capsys.readouterr().err
    monkeypatch.delenv("DIPTYCH_MAX_N")
    monkeypatch.setenv("DIPTYCH_MAX_NN", "1")
    with pytest.raises(SystemExit):
        main(["serve"])
    error = capsys.readouterr().err
    assert "DIPTYCH_MAX_NN" in error and "known: DIPTYCH_MODEL" in error


def test_bool_and_unsupported_setting_types() -> None:
    from pydantic import BaseModel, Field

    class Extra(BaseModel):
        reload: bool = Field(default=False, description="Reload on change.")
        labels: dict[str, str] = Field(default_factory=dict)

    parser = argparse.ArgumentParser()
    add_setting_flags(parser, {"reload": Extra.model_fields["reload"]})
    assert parser.parse_args(["--reload"]).reload is True
    assert parser.parse_args(["--no-reload"]).reload is False
    assert parser.parse_args([]).reload is None
    with pytest.raises(TypeError, match="labels"):
        add_setting_flags(argparse.ArgumentParser(), {"labels": Extra.model_fields["labels"]})


def _readme_rows() -> list[str]:
    text = (Path(__file__).parents[1] / "README.md").read_text()
    section = text[text.index("\n## Configuration\n"):]
    section = section[:section.index("\n## ", 1)]
    return [line for line in section.splitlines() if line.startswith("|") and "`" in line]


def test_readme_lists_every_setting_with_its_flag_and_variable() -> None:
    rows = _readme_rows()
    for name, field in Settings.model_fields.items():
        env, flag = f"`{env_var(name)}`", f"`{setting_flag(name, field)}`"
        assert any(env in row and flag in row for row in rows), f"README has no row with {env} and {flag}"
    # And nothing stale: each variable and flag the tables name is a setting's.
    flags = {setting_flag(name, field) for name, field in Settings.model_fields.items()}
    envs = {env_var(name) for name in Settings.model_fields}
    for row in rows:
        assert set(re.findall(r"`(DIPTYCH_[A-Z0-9_]+)`", row)) <= envs, row
        assert set(re.findall(r"`(--[a-z0-9-]+)`", row)) <= flags, row
