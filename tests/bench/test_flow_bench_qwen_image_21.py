"""``diptych bench flow --family qwen-image-2.1`` end to end: a real server and diffusers on the tiny checkpoint."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from diptych.bench import flow
from tests.conftest import TinyCheckpoint


# Slow (about 35 s: a server and a diffusers process): what it checks beyond the harness's unit
# tests, that served images equal diffusers', tests/e2e/test_qwen_image_21.py checks in CI.
@pytest.mark.slow
def test_bench_runs_mixed_bursts_singles_and_sequential_edits_and_images_agree(
    tiny_checkpoint: TinyCheckpoint, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    parser = argparse.ArgumentParser()
    flow.add_arguments(parser)
    # Minimal: one request of each kind, two steps, one single run per mode, two edits. One thread a
    # side: two stall on barriers whenever other work takes a core (docs/benchmarks.md).
    args = parser.parse_args([
        "--family", "qwen-image-2.1", "--model", str(tiny_checkpoint("qwen-image-2.1")), "--requests", "3",
        "--steps", "2", "--single", "1", "--edits", "2", "--threads", "1", "--work-dir", str(tmp_path), "--json",
    ])
    assert flow.run(args) == 0
    report = json.loads(capsys.readouterr().out)

    assert report["config"] | {"threads": None} == {
        "family": "qwen-image-2.1", "requests": 3, "size": None, "steps": 2, "guidance_scale": 4.0, "rounds": 1,
        "single": 1, "edits": 2, "threads": None}
    assert report["config"]["threads"] == 1
    assert report["machine"]["cpu_model"] and report["machine"]["cores"] >= 1
    assert len(report["machine"]["load_average_start"]) == 3
    (result,) = report["checkpoints"].values()
    # The tiny checkpoint's output resolution (64) squared, and the second size of the mix.
    assert result["size"] == "64x64"
    assert [(job["size"], job["references"]) for job in result["burst"]] == [
        ("64x64", 0), ("64x32", 1), ("64x64", 2)]
    assert result["throughput_ratio"] > 0 and result["server_latency_p95_s"] >= result["server_latency_p50_s"]
    assert set(result["single"]) == {"guided", "unguided"}
    edits = result["sequential_edits"]
    assert len(edits["server_s"]) == len(edits["diffusers_s"]) == 2 and edits["server_later_over_first"] > 0
    rss = result["peak_rss_bytes"]
    assert rss["flow_worker"] > 0 and rss["server_total"] >= rss["flow_worker"] and rss["diffusers"] > 0
    assert result["max_pixel_difference"] <= 1
