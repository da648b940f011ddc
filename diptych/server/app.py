"""The FastAPI app factory. Routes get the engine and settings by closure, not from a service locator."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from diptych.engine.protocol import EngineClient
from diptych.server.auth import ApiKeyMiddleware
from diptych.server.body_limit import BodyLimitMiddleware
from diptych.server.errors import install_error_handlers
from diptych.server.metrics import Metrics, MetricsMiddleware
from diptych.server.openapi import install_openapi
from diptych.server.remote_images import RemoteImageFetcher, RemoteImagePolicy
from diptych.server.routes.chat import chat_router
from diptych.server.routes.images import images_router
from diptych.server.routes.models import models_router
from diptych.server.routes.ops import ops_router
from diptych.server.shutdown import Drain, DrainMiddleware
from diptych.settings import Settings


def create_app(
    engine: EngineClient,
    settings: Settings,
    *,
    manage_engine: bool = True,
    drain: Drain | None = None,
    fetcher: RemoteImageFetcher | None = None,
) -> FastAPI:
    """``manage_engine``: start the engine with the app and shut it down with it.

    ``drain`` is shared with the server that runs the app (see shutdown.py); ``fetcher``
    defaults to one built from the settings' remote-image policy.
    """

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if manage_engine:
            await engine.start()
        try:
            yield
        finally:
            if manage_engine:
                await engine.shutdown()

    drain = drain or Drain()
    fetcher = fetcher or RemoteImageFetcher(RemoteImagePolicy.from_settings(settings))
    app = FastAPI(title="Diptych", version="0.1.0", lifespan=lifespan,
                  description="OpenAI-compatible server for unified multimodal models.")
    install_error_handlers(app)
    keys = tuple(k.get_secret_value() for k in settings.api_keys)
    metrics = Metrics(engine.stats)
    for router in (
        chat_router(engine, settings, fetcher, drain),
        images_router(engine, settings, drain),
        models_router(engine, settings),
        ops_router(engine, metrics, drain),
    ):
        app.include_router(router)
    install_openapi(app, auth_required=bool(keys))
    endpoints = frozenset(getattr(r, "path", "") for r in app.routes)
    # The last added is outermost: metrics see every status (401s, 503s of a draining server,
    # 413s of the body limit); the key is checked before anything else looks at the request.
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(DrainMiddleware, drain=drain)
    app.add_middleware(ApiKeyMiddleware, keys=keys)
    app.add_middleware(MetricsMiddleware, metrics=metrics, endpoints=endpoints)
    return app
