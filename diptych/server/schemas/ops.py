"""`GET /health`'s body (200 when ok, 503 otherwise)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel


class HealthResponse(BaseModel):
    status: Literal["starting", "ok", "degraded", "down", "stopping"]
    components: dict[str, Literal["starting", "ok", "degraded", "down", "stopping"]]
    model: str
