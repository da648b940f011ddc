"""Bearer API keys, compared in constant time."""

from __future__ import annotations

import hmac
from collections.abc import Callable

from fastapi import Request

from diptych.server.errors import APIError


def api_key_dependency(keys: tuple[str, ...]) -> Callable[[Request], None]:
    encoded = tuple(k.encode() for k in keys)

    def require_api_key(request: Request) -> None:
        if not encoded:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        presented = token.strip().encode() if scheme.lower() == "bearer" else b""
        # Compare against every key so that timing does not reveal which one nearly matched.
        matched = False
        for key in encoded:
            matched |= hmac.compare_digest(presented, key)
        if not matched:
            raise APIError(
                401,
                "missing or invalid API key; send it as 'Authorization: Bearer <key>'",
                code="invalid_api_key",
                headers={"WWW-Authenticate": "Bearer"},
            )

    return require_api_key
