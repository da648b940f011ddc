"""``diptych bench flow``'s pieces that need no server: requests, the report, /proc readings."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

from diptych.bench import flow
from diptych.bench.flow_server import peak_rss_bytes, process_name, process_tree


def _result(ratio: float) -> dict:
    single = {"server_s": 0.5, "diffusers_s": 0.4, "overhead": 0.25}
    return {
        "transformer_parameters": 76_641_440, "server_requests_per_s": 8.0, "diffusers_requests_per_s": 2.0,
        "throughput_ratio": ratio, "server_latency_p50_s": 0.9, "server_latency_p95_s": 1.0,
        "diffusers_latency_p50_s": 2.0, "diffusers_latency_p95_s": 3.8,
        "single": {"guided": single, "unguided": single},
        "peak_rss_bytes": {"flow_worker": 500 << 20, "server_total": None, "diffusers": 480 << 20},
        "max_pixel_difference": 1,
    }


def test_table_has_a_column_per_checkpoint_and_the_headline_numbers() -> None:
    config = {"requests": 8, "width": 64, "height": 64, "steps": 8, "guidance_scale": 4.0, "rounds": 3,
              "single": 5, "threads": 2}
    table = flow.format_table({"config": config, "checkpoints": {"tiny": _result(3.1), "mid": _result(4.0)}})
    lines = table.splitlines()
    assert lines[1].split() == ["checkpoint", "tiny", "mid"]
    ratio = next(line for line in lines if line.startswith("throughput ratio"))
    assert ratio.split()[-2:] == ["3.10x", "4.00x"]
    assert "+25.0%" in next(line for line in lines if line.startswith("single-request overhead, no CFG"))
    assert "n/a" in next(line for line in lines if line.startswith("peak RSS, all server"))


def test_requests_differ_in_prompt_negative_prompt_and_seed() -> None:
    maker = flow._JobMaker({"width": 64, "height": 48, "steps": 8})
    jobs = [maker.make(4.0) for _ in range(20)]
    for field in ("prompt", "negative_prompt", "seed"):
        assert len({getattr(job, field) for job in jobs}) == 20
    assert jobs[0].body("m")["size"] == "64x48"


def test_arguments_default_to_both_checkpoints() -> None:
    parser = argparse.ArgumentParser()
    flow.add_arguments(parser)
    args = parser.parse_args([])
    assert (args.checkpoints, args.requests, args.size, args.steps) == (["tiny", "mid"], 8, "64x64", 8)


def test_process_tree_and_peak_rss_come_from_proc() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert child.pid in process_tree(os.getpid())
        assert peak_rss_bytes(child.pid) > 0 and process_name(child.pid).startswith("python")
    finally:
        child.kill()
        child.wait()
    assert peak_rss_bytes(child.pid) == 0
