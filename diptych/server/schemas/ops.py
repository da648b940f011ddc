"""`GET /health`'s body (200 when ok, 503 otherwise)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel


_State = Literal["starting", "ok", "degraded", "restarting", "down", "stopping"]


class HealthResponse(BaseModel):
    status: _State
    components: dict[str, _State]
    model: str
