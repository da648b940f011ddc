"""``diptych bench load`` end to end: a real server on the tiny edit checkpoint, driven through the CLI.

One server for the module (its start-up dominates the cost). Its queue depth is 4 per
engine, so the mixed run at concurrency 4 is never refused, and a burst of 12 is.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from diptych.bench.load.inputs import builtin_images
from diptych.bench.server_process import ServerProcess, free_port, serving
from diptych.cli import main
from tests.conftest import TinyCheckpoint

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: TinyCheckpoint) -> Iterator[ServerProcess]:
    with serving(tiny_checkpoint("qwen-image-edit"), tmp_path_factory.mktemp("server"), "--queue-depth", "4") as process:
        yield process


def _counters(url: str) -> dict[tuple[str, ...], float]:
    """The server's own counts: requests by (endpoint, status), and generated tokens."""
    counts: dict[tuple[str, ...], float] = {}
    for family in text_string_to_metric_families(httpx.get(f"{url}/metrics", timeout=30).text):
        for sample in family.samples:
            if sample.name == "diptych_requests_total":
                counts[(sample.labels["endpoint"], sample.labels["status"])] = sample.value
            elif sample.name == "diptych_generated_tokens_total":
                counts[("tokens",)] = sample.value
    return counts


def _bench(tmp_path: Path, capsys: pytest.CaptureFixture[str], *args: str) -> dict:
    out = tmp_path / "report"
    assert main(["bench", "load", "--out", str(out), "--json", "--no-progress", *args]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads((out / "report.json").read_text())
    return printed


@pytest.mark.slow  # with the next test, its own server start: 71 s of a CI suite that must stay under 20 minutes
def test_mixed_load_counts_match_what_was_sent_and_what_came_back(
    server: ServerProcess, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Two pictures from a folder: edits of one picture reuse the server's cached source
    # latents, which keeps this run short (an edit's VAE encode dominates it on CPU).
    pictures = tmp_path / "pictures"
    pictures.mkdir()
    for image in builtin_images(2):
        (pictures / image.name).write_bytes(image.data)
    before = _counters(server.base_url)
    report = _bench(tmp_path, capsys, "--url", server.base_url, "--scenario", "mixed", "--concurrency", "4",
                    "--requests", "21", "--steps", "2", "--partial-images", "1", "--max-tokens", "8",
                    "--images", str(pictures), "--slo-latency-ms", "600000")
    after = _counters(server.base_url)
    (point,) = report["points"]
    s = point["summary"]
    assert (s["requests"], s["ok"], s["errors"]) == (21, 21, {})
    assert {kind: k["requests"] for kind, k in s["kinds"].items()} == {"chat": 7, "edit": 7, "generate": 7}
    # The server saw the same requests, all answered 200.
    for endpoint in ("/v1/chat/completions", "/v1/images/generations", "/v1/images/edits"):
        assert after.get((endpoint, "200"), 0) - before.get((endpoint, "200"), 0) == 7, endpoint
    # What came back: the server's token count, one image and one partial image per image request.
    assert s["output_tokens"] == after[("tokens",)] - before[("tokens",)] > 0
    assert (s["images"], s["partial_images"]) == (14, 14)
    assert s["slo_met"] == 21 and s["goodput_per_s"] == pytest.approx(s["requests_per_s"])
    for kind in ("generate", "edit"):  # each streamed one partial image before its image
        assert s["kinds"][kind]["ttft_ms"]["count"] == 7
        assert s["kinds"][kind]["ttft_ms"]["p50"] <= s["kinds"][kind]["latency_ms"]["p50"]
    # A random tiny model may answer a chat with no text at all (no first token then), but not all.
    chat = s["kinds"]["chat"]
    assert 1 <= chat["ttft_ms"]["count"] <= 7
    assert chat["itl_ms"] is None or chat["itl_ms"]["count"] <= s["output_tokens"]
    assert (tmp_path / "report" / "latency-mixed.png").stat().st_size > 0
    assert "| mixed | c=4 | 21 | 21 |" in (tmp_path / "report" / "report.md").read_text()


@pytest.mark.slow
def test_server_errors_are_counted_by_status(
    server: ServerProcess, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # 70 is not a multiple of the model's size step: every request is a 400.
    bad_size = _bench(tmp_path, capsys, "--url", server.base_url, "--scenario", "generate", "--size", "70x70",
                      "--concurrency", "2", "--requests", "4")
    s = bad_size["points"][0]["summary"]
    assert (s["requests"], s["ok"], s["errors"], s["latency_ms"]) == (4, 0, {"400": 4}, None)

    # Twelve at once into a queue of four: the gate refuses what does not fit with 429.
    burst = _bench(tmp_path, capsys, "--url", server.base_url, "--scenario", "generate", "--steps", "40",
                   "--concurrency", "12", "--requests", "12")
    s = burst["points"][0]["summary"]
    assert s["requests"] == 12 and set(s["errors"]) == {"429"}
    assert s["errors"]["429"] >= 1 and s["ok"] + s["errors"]["429"] == 12 and s["images"] == s["ok"]


def test_a_server_that_is_not_there_is_counted_as_connection_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report = _bench(tmp_path, capsys, "--url", f"http://127.0.0.1:{free_port()}", "--model", "m",
                    "--scenario", "vqa", "--rate", "50", "--requests", "3")
    s = report["points"][0]["summary"]
    assert (s["requests"], s["ok"], s["errors"]) == (3, 0, {"ConnectError": 3})
