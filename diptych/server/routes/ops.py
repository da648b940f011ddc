"""Operations: /health (open even with API keys, see auth.py) and /metrics."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from diptych.engine.protocol import EngineClient
from diptych.server.metrics import Metrics
from diptych.server.schemas.errors import error_responses
from diptych.server.schemas.ops import HealthResponse
from diptych.server.shutdown import Drain


def ops_router(engine: EngineClient, metrics: Metrics, drain: Drain) -> APIRouter:
    router = APIRouter()

    @router.get("/health", response_model=None, responses={
        200: {"model": HealthResponse, "description": "Serving."},
        503: {"model": HealthResponse, "description": "Starting, degraded, restarting, down or stopping."},
    })
    async def health() -> JSONResponse:
        state = engine.health()
        # A draining server is still healthy inside, but load balancers must stop sending to it.
        status = "stopping" if drain.draining else state.state
        body = {"status": status, "components": state.components, "model": engine.card.name}
        return JSONResponse(body, status_code=200 if status == "ok" else 503)

    @router.get("/metrics", response_class=Response, responses={
        200: {"description": "Prometheus text format.", "content": {"text/plain": {"schema": {"type": "string"}}}},
        **error_responses(),
    })
    async def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return router
