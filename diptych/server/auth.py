"""Bearer API keys, checked before anything else reads the request.

A middleware rather than a route dependency: FastAPI parses a JSON body before it runs a
route's dependencies, so a client without a key could still make the server read and
validate bodies, and learn from the 400s what it accepts. Here every path but /health
answers 401 until a key matches; unknown paths too, so the routes are not revealed.
"""

from __future__ import annotations

import hmac
import json

from starlette.types import ASGIApp, Receive, Scope, Send

from diptych.server.errors import error_body

_OPEN_PATHS = frozenset({"/health"})


class ApiKeyMiddleware:
    def __init__(self, app: ASGIApp, keys: tuple[str, ...]) -> None:
        self.app = app
        self.keys = tuple(k.encode() for k in keys)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.keys or scope.get("path") in _OPEN_PATHS or self._matches(scope):
            await self.app(scope, receive, send)
            return
        body = json.dumps(error_body(401, "missing or invalid API key; send it as 'Authorization: Bearer <key>'",
                                     code="invalid_api_key")).encode()
        await send({
            "type": "http.response.start",
            "status": 401,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                        (b"www-authenticate", b"Bearer")],
        })
        await send({"type": "http.response.body", "body": body})

    def _matches(self, scope: Scope) -> bool:
        header = b""
        for name, value in scope.get("headers", ()):
            if name == b"authorization":
                header = value
                break
        scheme, _, token = header.partition(b" ")
        presented = token.strip() if scheme.lower() == b"bearer" else b""
        # Compare against every key so that timing does not reveal which one nearly matched.
        matched = False
        for key in self.keys:
            matched |= hmac.compare_digest(presented, key)
        return matched
