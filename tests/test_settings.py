from __future__ import annotations

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
