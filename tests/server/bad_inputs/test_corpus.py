"""The bad-input corpus: every case gets its intended 4xx in OpenAI's envelope, nothing reaches compute,
and the server stays healthy. The cases live in the ``cases_*`` tables; the format is in table.py."""

from __future__ import annotations

import pytest

from tests.server.bad_inputs import cases_access, cases_chat, cases_edits, cases_generations, cases_images
from tests.server.bad_inputs.conftest import ScriptedClientFactory
from tests.server.bad_inputs.table import Case, Request, chat, edit, generation

CASES: list[Case] = [
    *cases_chat.CASES, *cases_generations.CASES, *cases_edits.CASES, *cases_images.CASES, *cases_access.CASES,
]
ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
               405: "invalid_request_error", 413: "invalid_request_error", 415: "invalid_request_error"}


def test_the_corpus_is_large_unique_and_covers_both_encodings() -> None:
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids)), "case ids must be unique"
    assert len(CASES) >= 100
    multipart = [c for c in CASES if c.request.files or c.request.data is not None
                 or dict(c.request.headers).get("content-type", "").startswith("multipart/")]
    assert len(multipart) >= 30 and len(CASES) - len(multipart) >= 60


@pytest.mark.parametrize("request_", [chat(), generation(), edit()], ids=["chat", "generation", "edit"])
async def test_the_requests_the_cases_start_from_are_accepted(scripted_client: ScriptedClientFactory,
                                                              request_: Request) -> None:
    # Each case changes one thing in one of these; were they refused, the corpus would prove nothing.
    client, scripted = scripted_client()
    response = await client.request(request_.method, request_.path, **request_.httpx_kwargs())
    assert response.status_code == 200, response.text
    assert scripted.reached_compute()


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
async def test_bad_input_gets_its_error(scripted_client: ScriptedClientFactory, case: Case) -> None:
    client, scripted = scripted_client(**case.settings)
    response = await client.request(case.request.method, case.request.path, **case.request.httpx_kwargs())
    assert response.status_code == case.status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    error = body["error"]
    assert (error["param"], error["code"]) == (case.param, case.code), error["message"]
    assert error["type"] == ERROR_TYPES[case.status]
    assert isinstance(error["message"], str) and 0 < len(error["message"]) < 1000
    assert not scripted.reached_compute()
    health = await client.get("/health")
    assert health.status_code == 200 and health.json()["status"] == "ok"
