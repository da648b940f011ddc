"""Requests refused before any endpoint logic: unknown routes and methods, and API keys when keys are set."""

from __future__ import annotations

from tests.server.bad_inputs.table import CHAT, EDITS, GENERATIONS, Case, Request, chat, edit, generation, raw

KEYS = {"api_keys": "k-one,k-two"}


def _with_headers(request: Request, **headers: str) -> Request:
    return Request(request.method, request.path, request.json_body, request.content, request.data, request.files,
                   tuple(headers.items()))


def _a(id: str, request: Request, status: int, code: str | None, param: str | None = None,  # noqa: A002
       **settings: object) -> Case:
    return Case(f"access-{id}", request, status, param, code, dict(settings))


AUTH_HEADERS = {
    "no-header": {},
    "wrong-key": {"authorization": "Bearer k-three"},
    "key-without-scheme": {"authorization": "k-one"},
    "basic-scheme": {"authorization": "Basic k-one"},
    "empty-bearer": {"authorization": "Bearer "},
    "key-prefix": {"authorization": "Bearer k-on"},
    "key-as-other-header": {"x-api-key": "k-one"},
}
ENDPOINTS = {"chat": chat(), "generations": generation(), "edits": edit(), "models": Request("GET", "/v1/models"),
             "metrics": Request("GET", "/metrics")}

CASES = [
    _a("unknown-route", Request("GET", "/v1/nothing"), 404, "not_found"),
    _a("v1-completions-not-served", Request("POST", "/v1/completions", json_body={"prompt": "x"}), 404, "not_found"),
    _a("get-chat", Request("GET", CHAT), 405, "method_not_allowed"),
    _a("put-generations", Request("PUT", GENERATIONS, json_body={"prompt": "x"}), 405, "method_not_allowed"),
    _a("delete-edits", Request("DELETE", EDITS), 405, "method_not_allowed"),
    _a("unknown-model-id", Request("GET", "/v1/models/other"), 404, "model_not_found", "model"),
    *(_a(f"{name}-{endpoint}", _with_headers(request, **headers), 401, "invalid_api_key", **KEYS)
      for name, headers in AUTH_HEADERS.items() for endpoint, request in ENDPOINTS.items()
      if name in ("no-header", "wrong-key") or endpoint == "chat"),
    _a("key-in-query", Request("GET", "/v1/models?api_key=k-one"), 401, "invalid_api_key", **KEYS),
    # Without a key nothing is parsed, routed or measured: the answer is 401 whatever was sent.
    _a("no-key-invalid-json", raw(CHAT, b"{not json"), 401, "invalid_api_key", **KEYS),
    _a("no-key-schema-violation", chat(temperature=99), 401, "invalid_api_key", **KEYS),
    _a("no-key-body-over-limit", chat(user="x" * 5000), 401, "invalid_api_key", max_body_bytes=4096, **KEYS),
    _a("no-key-unknown-route", Request("GET", "/v1/nothing"), 401, "invalid_api_key", **KEYS),
    _a("no-key-openapi", Request("GET", "/openapi.json"), 401, "invalid_api_key", **KEYS),
]
