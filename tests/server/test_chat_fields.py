"""Every field of vLLM's chat request is honoured, ignored or refused, as docs/api.md says."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from diptych.server.schemas.chat import ChatCompletionRequest

_TABLE_ROW = re.compile(r"^\| `(?P<field>[a-z_]+)` \| (?P<status>honoured|ignored|refused) \|", re.M)
# OpenAI's fields beyond vLLM's (docs/api.md's last paragraph).
OPENAI_ONLY = {"store", "metadata", "service_tier", "modalities"}


def _documented() -> dict[str, str]:
    text = (Path(__file__).parents[2] / "docs" / "api.md").read_text()
    return {match["field"]: match["status"] for match in _TABLE_ROW.finditer(text)}


def test_every_vllm_chat_field_is_documented() -> None:
    pytest.importorskip("vllm")
    from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest as VLLMRequest

    documented = _documented()
    missing = sorted(set(VLLMRequest.model_fields) - set(documented))
    assert not missing, f"vLLM's chat request has fields docs/api.md does not list: {missing}"


def test_the_table_matches_the_schema() -> None:
    documented = _documented()
    ours = set(ChatCompletionRequest.model_fields)
    accepted = {field for field, status in documented.items() if status in ("honoured", "ignored")}
    assert accepted <= ours, f"documented as accepted but not in the schema: {sorted(accepted - ours)}"
    # A refused field is absent from the schema: extra="forbid" refuses it by name.
    refused_in_schema = {field for field, status in documented.items() if status == "refused"} & ours
    assert not refused_in_schema, sorted(refused_in_schema)
    undocumented = ours - set(documented) - OPENAI_ONLY
    assert not undocumented, f"schema fields docs/api.md does not list: {sorted(undocumented)}"
