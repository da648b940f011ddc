"""The corpus' table format: one :class:`Case` per bad input, built with the request helpers below.

A case is a request, the settings it runs under, and the answer it must get: a status and
the envelope's ``param`` and ``code`` (``None`` where the envelope carries null). The
helpers start from a request that is accepted and change one thing, so each case is about
exactly one defect.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from typing import Any

from tests.server.bad_inputs import images

CHAT = "/v1/chat/completions"
GENERATIONS = "/v1/images/generations"
EDITS = "/v1/images/edits"
DROP = object()  # as a field value: leave the field out

File = tuple[str | None, bytes, str | None]  # filename, content, content type (httpx's tuple)


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    json_body: Any = None  # serialised with json.dumps unless ``content`` is given
    content: bytes | None = None
    data: dict[str, str] | None = None  # multipart text fields
    files: tuple[tuple[str, File], ...] = ()  # multipart file parts, in order (names may repeat)
    headers: tuple[tuple[str, str], ...] = ()

    def httpx_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"headers": dict(self.headers)}
        if self.content is not None:
            kwargs["content"] = self.content
        elif self.files:
            kwargs["files"] = list(self.files)
            kwargs["data"] = self.data or {}
        elif self.data is not None:
            # httpx sends a form without files urlencoded; a file-less multipart needs explicit parts.
            kwargs["files"] = [(k, (None, v.encode(), None)) for k, v in self.data.items()]
        elif self.json_body is not None:
            kwargs["content"] = json.dumps(self.json_body).encode()
            kwargs["headers"].setdefault("content-type", "application/json")
        return kwargs


@dataclass(frozen=True)
class Case:
    id: str
    request: Request
    status: int
    param: str | None
    code: str | None
    settings: dict[str, Any] = field(default_factory=dict)


def _apply(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    body = dict(base)
    for key, value in changes.items():
        if value is DROP:
            body.pop(key, None)
        else:
            body[key] = value
    return body


def user_message(*parts: dict[str, Any]) -> dict[str, Any]:
    return {"role": "user", "content": list(parts)}


def image_part(url: str) -> dict[str, Any]:
    return {"type": "image_url", "image_url": {"url": url}}


def text_part(text: str) -> dict[str, Any]:
    return {"type": "text", "text": text}


def chat_body(**changes: Any) -> dict[str, Any]:
    base = {"model": "tiny", "messages": [user_message(image_part(data_url(images.png())), text_part("colour?"))],
            "max_tokens": 8}
    return _apply(base, changes)


def chat(**changes: Any) -> Request:
    return Request("POST", CHAT, json_body=chat_body(**changes))


def chat_image(url: str) -> Request:
    """A chat whose one image is ``url`` (its param is ``messages.0.content.0.image_url``)."""
    return chat(messages=[user_message(image_part(url), text_part("colour?"))])


def generation(**changes: Any) -> Request:
    return Request("POST", GENERATIONS, json_body=_apply({"prompt": "a red circle", "size": "32x32"}, changes))


def edit(fields: dict[str, Any] | None = None, files: tuple[tuple[str, File], ...] | None = None) -> Request:
    data = _apply({"prompt": "make it green", "size": "32x32"}, fields or {})
    parts = files if files is not None else (("image", ("source.png", images.png(), "image/png")),)
    return Request("POST", EDITS, data=data, files=parts)


def upload(data: bytes, name: str = "image", filename: str = "source.png", mime: str = "image/png") -> tuple[str, File]:
    return (name, (filename, data, mime))


def raw(path: str, content: bytes, content_type: str | None = "application/json", method: str = "POST") -> Request:
    headers = (("content-type", content_type),) if content_type else ()
    return Request(method, path, content=content, headers=headers)


def data_url(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"
