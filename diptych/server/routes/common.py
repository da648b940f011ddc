from __future__ import annotations

from diptych.engine.protocol import EngineClient
from diptych.server.errors import APIError


def check_model(name: str | None, engine: EngineClient) -> None:
    """``None`` (images' optional ``model``) means the loaded model; any other name must be it."""
    if name is not None and name != engine.card.name:
        raise APIError(
            404,
            f"the model '{name}' does not exist; this server serves '{engine.card.name}'",
            param="model",
            code="model_not_found",
        )
