from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import httpx
import pytest

from diptych.server.app import create_app
from diptych.settings import Settings
from tests.server.scripted_engine import Scripted, scripted_engine

ScriptedClientFactory = Callable[..., tuple[httpx.AsyncClient, Scripted]]


@pytest.fixture
async def scripted_client() -> AsyncIterator[ScriptedClientFactory]:
    """``factory(**settings)`` → an in-process client of an app over the real orchestrator with scripted stages."""
    clients: list[httpx.AsyncClient] = []

    def factory(**settings: object) -> tuple[httpx.AsyncClient, Scripted]:
        config = Settings(**settings)
        scripted = scripted_engine(config)
        app = create_app(scripted.orchestrator, config, manage_engine=False)
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")
        clients.append(client)
        return client, scripted

    yield factory
    for client in clients:
        await client.aclose()
