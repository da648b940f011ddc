"""A client that hangs up half-way through sending its body (found by the soak test): no 500 and no
traceback. A multipart upload ends as 499; a JSON body as FastAPI's 400 for a body it could not read."""

from __future__ import annotations

import logging

import pytest
from prometheus_client import generate_latest

from diptych.server.app import create_app
from diptych.settings import Settings
from tests.server.fake_engine import FakeEngine

BOUNDARY = "soakboundary"


def _scope(path: str, content_type: str, length: int) -> dict:
    return {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
        "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
        "headers": [(b"host", b"test"), (b"content-type", content_type.encode()),
                    (b"content-length", str(length).encode())],
        "client": ("127.0.0.1", 1234), "server": ("127.0.0.1", 80),
    }


@pytest.mark.parametrize(("path", "content_type", "first_chunk", "status"), [
    ("/v1/images/edits", f"multipart/form-data; boundary={BOUNDARY}",
     f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="prompt"\r\n\r\nmake it'.encode(), 499),
    ("/v1/chat/completions", "application/json", b'{"model": "tiny", "messages": [{"role": "us', 400),
], ids=["multipart", "json"])
async def test_a_body_cut_short_by_a_disconnect_is_no_server_error(
    path: str, content_type: str, first_chunk: bytes, status: int, caplog: pytest.LogCaptureFixture
) -> None:
    app = create_app(FakeEngine(), Settings(), manage_engine=False)
    messages = [{"type": "http.request", "body": first_chunk, "more_body": True}, {"type": "http.disconnect"}]

    async def receive() -> dict:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    sent: list[dict] = []

    async def send(message: dict) -> None:
        sent.append(message)

    with caplog.at_level(logging.INFO):
        await app(_scope(path, content_type, len(first_chunk) + 4096), receive, send)
    assert sent[0]["type"] == "http.response.start" and sent[0]["status"] == status
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
    # The metrics middleware is outermost; find its registry through the app's middleware stack.
    metrics = next(m.kwargs["metrics"] for m in app.user_middleware if "metrics" in m.kwargs)
    text = generate_latest(metrics.registry).decode()
    assert f'diptych_requests_total{{endpoint="{path}",status="{status}"}} 1.0' in text
    assert 'status="500"' not in text
