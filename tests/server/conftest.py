from __future__ import annotations

import base64
import io
from collections.abc import AsyncIterator, Callable

import httpx
import pytest
from PIL import Image

from diptych.server.app import create_app
from diptych.settings import Settings
from tests.server.fake_engine import FakeEngine


def png_bytes(size: tuple[int, int] = (32, 32), colour: tuple[int, int, int] = (0, 0, 255)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


def data_url(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


ClientFactory = Callable[..., "httpx.AsyncClient"]


@pytest.fixture
async def make_client() -> AsyncIterator[Callable[..., httpx.AsyncClient]]:
    clients: list[httpx.AsyncClient] = []

    def factory(engine: FakeEngine | None = None, **settings: object) -> httpx.AsyncClient:
        app = create_app(engine or FakeEngine(), Settings(**settings), manage_engine=False)
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")
        clients.append(client)
        return client

    yield factory
    for client in clients:
        await client.aclose()
