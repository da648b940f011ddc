from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from pydantic import ValidationError

from diptych.settings import Settings


def test_environment_and_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DIPTYCH_API_KEYS", "k1, k2")
    monkeypatch.setenv("DIPTYCH_QUEUE_DEPTH", "3")
    monkeypatch.setenv("DIPTYCH_PORT", "9000")
    settings = Settings(port=9100)  # a flag wins over the environment
    assert [k.get_secret_value() for k in settings.api_keys] == ["k1", "k2"]
    assert settings.queue_depth == 3 and settings.port == 9100
    assert settings.limits().queue_depth == 3


def test_bad_values_and_unknown_keys_are_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValidationError, match="queue_depth"):
        Settings(queue_depth=0)
    with pytest.raises(ValidationError, match="device"):
        Settings(device="tpu")
    with pytest.raises(ValidationError, match="no_such_setting"):
        Settings(no_such_setting=1)


def test_unknown_environment_variables_are_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DIPTYCH_QUEUE_DEPT", "3")
    with pytest.raises(ValueError, match="DIPTYCH_QUEUE_DEPT"):
        Settings()


def test_every_setting_has_a_description() -> None:
    # It is the help of the setting's flag.
    assert [name for name, field in Settings.model_fields.items() if not field.description] == []


def test_limits_and_engine_config_carry_every_setting_by_name() -> None:
    # Values unlike the defaults, so that a field left at its default would show.
    settings = Settings(max_image_side=512, max_n=3, max_steps=7, max_prompt_tokens=99, max_output_tokens=11,
                        max_images_per_request=2, queue_depth=5, request_timeout_s=9.5, device="cuda",
                        cache_dir=Path("/tmp/c"), kv_cache_gib=0.25, flow_memory_gib=2.5, max_model_len=777,
                        max_num_seqs=3, ar_startup_timeout_s=12.0)
    config = settings.engine_config(Path("ckpt"), "served")
    assert (config.model_dir, config.served_name, config.limits) == (Path("ckpt"), "served", settings.limits())
    for instance in (config, config.limits):
        for field in dataclasses.fields(instance):
            if field.name in Settings.model_fields:
                assert getattr(instance, field.name) == getattr(settings, field.name), field.name


def test_a_derived_field_that_is_no_setting_is_an_error() -> None:
    @dataclasses.dataclass(frozen=True)
    class Config:
        max_n: int
        max_widgets: int

    with pytest.raises(TypeError, match="max_widgets"):
        Settings()._derive(Config)
    assert Settings()._derive(Config, max_widgets=2) == Config(max_n=4, max_widgets=2)
