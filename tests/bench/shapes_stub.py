"""A stand-in OpenAI-compatible server that knows ShapesBench's answers.

It answers from the ground truth of the same items the bench builds (same n and seed):
VQA from the item's answer, generations with a render of the scene the prompt was
written from, edits with a render of the target. The seeds of image requests are kept
in ``app.state.seeds`` (by task). ``mode="wrong_colors"`` gives every
colour a wrong value (answers and pictures), ``mode="broken_images"`` fails image requests;
a correct bench must score these lower.
"""

from __future__ import annotations

import base64
import hashlib
import io
from dataclasses import replace
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from diptych.bench.shapes import bench as sb
from diptych.bench.shapes.world import COLORS, Scene, render

# Each colour shifted to the next: every object keeps its shape, size and cell.
_WRONG = {color: COLORS[(i + 1) % len(COLORS)] for i, color in enumerate(COLORS)}


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _recolor(scene: Scene) -> Scene:
    return Scene(tuple(replace(obj, color=_WRONG[obj.color]) for obj in scene.objects))


def _image_response(scene: Scene) -> dict[str, Any]:
    buffer = io.BytesIO()
    render(scene).save(buffer, format="PNG")
    return {"created": 0, "data": [{"b64_json": base64.b64encode(buffer.getvalue()).decode()}], "output_format": "png",
            "size": "64x64"}


def stub_app(n: int, seed: int = 0, mode: str = "right") -> FastAPI:
    wrong = mode == "wrong_colors"
    answers = {(_digest(item.image_png), item.question): _WRONG.get(item.answer, item.answer) if wrong else item.answer
               for item in sb.vqa_items(n, seed)}
    pictures = {item.prompt: _recolor(item.scene) if wrong else item.scene for item in sb.t2i_items(n, seed)}
    targets = {(_digest(item.source_png), item.instruction): _recolor(item.triplet.target) if wrong
               else item.triplet.target for item in sb.edit_items(n, seed)}
    app = FastAPI()
    app.state.seeds = {"t2i": [], "edit": []}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": "stub-shapes", "object": "model"}]}

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> dict[str, Any]:
        body = await request.json()
        parts = body["messages"][0]["content"]
        image = base64.b64decode(next(p for p in parts if p["type"] == "image_url")["image_url"]["url"].split(",")[1])
        question = next(p for p in parts if p["type"] == "text")["text"]
        answer = answers[(_digest(image), question)]
        return {"choices": [{"index": 0, "message": {"role": "assistant", "content": f"{answer.capitalize()}."}}]}

    @app.post("/v1/images/generations", response_model=None)
    async def generations(request: Request) -> dict[str, Any] | JSONResponse:
        if mode == "broken_images":
            return JSONResponse({"error": {"message": "boom", "type": "server_error"}}, status_code=500)
        body = await request.json()
        app.state.seeds["t2i"].append(body["seed"])
        return _image_response(pictures[body["prompt"]])

    @app.post("/v1/images/edits", response_model=None)
    async def edits(request: Request) -> dict[str, Any] | JSONResponse:
        if mode == "broken_images":
            return JSONResponse({"error": {"message": "boom", "type": "server_error"}}, status_code=500)
        form = await request.form()
        source = await form["image"].read()  # type: ignore[union-attr]
        app.state.seeds["edit"].append(int(str(form["seed"])))
        return _image_response(targets[(_digest(source), str(form["prompt"]))])

    return app
