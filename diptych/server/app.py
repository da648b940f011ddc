"""The FastAPI app factory. Routes get the engine and settings by closure, not from a service locator."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from diptych.engine.protocol import EngineClient
from diptych.server.auth import api_key_dependency
from diptych.server.body_limit import BodyLimitMiddleware
from diptych.server.errors import install_error_handlers
from diptych.server.metrics import Metrics, MetricsMiddleware
from diptych.server.routes.chat import chat_router
from diptych.server.routes.images import images_router
from diptych.server.routes.models import models_router
from diptych.server.routes.ops import ops_router
from diptych.settings import Settings


def create_app(engine: EngineClient, settings: Settings, *, manage_engine: bool = True) -> FastAPI:
    """``manage_engine``: start the engine with the app and shut it down with it."""

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if manage_engine:
            await engine.start()
        try:
            yield
        finally:
            if manage_engine:
                await engine.shutdown()

    app = FastAPI(title="Diptych", version="0.1.0", lifespan=lifespan,
                  description="OpenAI-compatible server for unified multimodal models.")
    install_error_handlers(app)
    auth = api_key_dependency(tuple(k.get_secret_value() for k in settings.api_keys))
    metrics = Metrics(engine.stats)
    for router in (
        chat_router(engine, settings, auth),
        images_router(engine, settings, auth),
        models_router(engine, settings, auth),
        ops_router(engine, metrics, auth),
    ):
        app.include_router(router)
    endpoints = frozenset(getattr(r, "path", "") for r in app.routes)
    # The last added is outermost: metrics see every status, the 413s of the body limit included.
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(MetricsMiddleware, metrics=metrics, endpoints=endpoints)
    return app
