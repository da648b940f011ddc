"""Hostile uploads, over and over, leave the server's memory where it was: decompression bombs (refused
from their headers), the largest upload that fits the body limit (decoded in full, then refused for
its mask), and one past the limit (413). The gateway's RSS, read with psutil, stays bounded."""

from __future__ import annotations

import base64
import io

import httpx
import numpy as np
import psutil
from PIL import Image

from diptych.bench.server_process import ServerProcess
from tests.server.bad_inputs import images

MODEL = "tiny-qwen-image-edit"
BODY_LIMIT = 20 * 1024 * 1024  # the server's default DIPTYCH_MAX_BODY_BYTES
# Warm-up rounds let the allocator settle (its arenas keep freed blocks for reuse); a leak of
# one large upload or its decoded pixels (2560² RGB: 20 MB) per round then adds 120 MB or more
# over the measured rounds, twice the bound.
ROUNDS, WARM_UP = 6, 3
GROWTH_BOUND = 64 * 1024 * 1024


def noise_png(side: int) -> bytes:
    pixels = np.random.default_rng(0).integers(0, 256, (side, side, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def one_round(client: httpx.Client, large: bytes, bomb: bytes, header_bomb: bytes) -> None:
    data_url = "data:image/png;base64," + base64.b64encode(bomb).decode()
    chat = client.post("/v1/chat/completions", json={"model": MODEL, "max_tokens": 4, "messages": [
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_url}}]}]})
    assert chat.status_code == 400 and chat.json()["error"]["code"] == "image_too_large", chat.text
    for source in (bomb, header_bomb):
        edit = client.post("/v1/images/edits", data={"prompt": "x"}, files={"image": ("b.png", source, "image/png")})
        assert edit.status_code == 400 and edit.json()["error"]["code"] == "image_too_large", edit.text
    # The largest upload that fits: decoded in full, then refused because its mask does not match.
    fits = client.post("/v1/images/edits", data={"prompt": "x"}, files={
        "image": ("large.png", large, "image/png"), "mask": ("m.png", images.png((8, 8)), "image/png")})
    assert fits.status_code == 400 and fits.json()["error"]["param"] == "mask", fits.text
    too_big = client.post("/v1/images/edits", data={"prompt": "x"},
                          files={"image": ("huge.png", b"\0" * (BODY_LIMIT + 1), "image/png")})
    assert too_big.status_code == 413, too_big.text


def test_hostile_uploads_leave_memory_bounded(server: ServerProcess) -> None:
    large = noise_png(2560)
    assert BODY_LIMIT - 2 * 1024 * 1024 < len(large) < BODY_LIMIT - 64 * 1024  # near the limit, with the form around it
    bomb, header_bomb = images.png_real_bomb(8192), images.png_header_bomb()
    gateway = psutil.Process(server.process.pid)
    with httpx.Client(base_url=server.base_url, timeout=120) as client:
        for _ in range(WARM_UP):
            one_round(client, large, bomb, header_bomb)
        settled = gateway.memory_info().rss
        trace = []
        for _ in range(ROUNDS):
            one_round(client, large, bomb, header_bomb)
            trace.append(gateway.memory_info().rss)
        grown = trace[-1] - settled
        assert grown < GROWTH_BOUND, (
            f"gateway RSS grew by {grown / 2**20:.0f} MiB over {ROUNDS} rounds; MiB after each: "
            f"{[round(r / 2**20) for r in [settled, *trace]]}")
        assert client.get("/health").json()["status"] == "ok"
