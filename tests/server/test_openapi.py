"""The published /openapi.json states the error envelope, the SSE alternative and the API-key requirement."""

from __future__ import annotations

from tests.server.fake_engine import FakeEngine

ENVELOPE = {"$ref": "#/components/schemas/ErrorResponse"}


def envelope_of(operation: dict, status: str) -> dict:
    return operation["responses"][status]["content"]["application/json"]["schema"]


async def test_every_error_status_is_the_envelope_and_422_is_gone(make_client) -> None:
    schema = (await make_client(FakeEngine()).get("/openapi.json")).json()
    paths = schema["paths"]
    for path in ("/v1/chat/completions", "/v1/images/generations", "/v1/images/edits"):
        operation = paths[path]["post"]
        for status in ("400", "404", "413", "429", "503", "504", "default"):
            assert envelope_of(operation, status) == ENVELOPE, (path, status)
        assert set(operation["responses"]["200"]["content"]) == {"application/json", "text/event-stream"}
    assert envelope_of(paths["/v1/images/edits"]["post"], "415") == ENVELOPE
    assert all("422" not in op["responses"] for ops in paths.values() for op in ops.values())
    assert "HTTPValidationError" not in schema["components"]["schemas"]
    error = schema["components"]["schemas"]["ErrorDetail"]
    assert set(error["required"]) == {"message", "type", "param", "code"}
    assert paths["/health"]["get"]["responses"]["503"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/HealthResponse"}
    assert "security" not in paths["/v1/models"]["get"]  # no keys configured: none required


async def test_with_api_keys_every_operation_but_health_requires_one(make_client) -> None:
    client = make_client(FakeEngine(), api_keys="k1")
    schema = (await client.get("/openapi.json", headers={"Authorization": "Bearer k1"})).json()
    assert schema["components"]["securitySchemes"]["apiKey"] == {
        "type": "http", "scheme": "bearer", "description": "One of the server's API keys."}
    for path, operations in schema["paths"].items():
        for operation in operations.values():
            if path == "/health":
                assert "security" not in operation and "401" not in operation["responses"]
            else:
                assert operation["security"] == [{"apiKey": []}]
                assert envelope_of(operation, "401") == ENVELOPE
