"""Operations: /health (always open) and /metrics."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from diptych.engine.protocol import EngineClient
from diptych.server.metrics import Metrics


def ops_router(engine: EngineClient, metrics: Metrics, auth: object) -> APIRouter:
    router = APIRouter()

    @router.get("/health")
    async def health() -> JSONResponse:
        state = engine.health()
        body = {"status": state.state, "components": state.components, "model": engine.card.name}
        return JSONResponse(body, status_code=200 if state.state == "ok" else 503)

    @router.get("/metrics", dependencies=[Depends(auth)])
    async def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return router
