"""``diptych bench flow``'s pieces that need no server: requests, the report, /proc readings."""

from __future__ import annotations

import argparse
import io
import os
import subprocess
import sys

import pytest
from PIL import Image

from diptych.bench import flow
from diptych.bench.flow_jobs import MixedJobs, TextToImageJobs, reference_picture, second_size
from diptych.bench.flow_report import cpu_model, format_table
from diptych.bench.flow_server import ImageJob, peak_rss_bytes, process_name, process_tree


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
    config = {"requests": 8, "size": "64x64", "steps": 8, "guidance_scale": 4.0, "rounds": 3,
              "single": 5, "threads": 2}
    table = format_table({"config": config, "checkpoints": {"tiny": _result(3.1), "mid": _result(4.0)}})
    lines = table.splitlines()
    assert lines[1].split() == ["checkpoint", "tiny", "mid"]
    ratio = next(line for line in lines if line.startswith("throughput ratio"))
    assert ratio.split()[-2:] == ["3.10x", "4.00x"]
    assert "+25.0%" in next(line for line in lines if line.startswith("single-request overhead, no CFG"))
    assert "n/a" in next(line for line in lines if line.startswith("peak RSS, all server"))
    # Parts this family does not measure have no row.
    assert not any(line.startswith("sequential edits") for line in lines)


def test_table_shows_sequential_edits_burst_mix_and_machine_when_measured() -> None:
    result = {
        **_result(1.2), "size": "256x256", "load_average_start": [1.5, 1, 1], "load_average_end": [2.5, 1, 1],
        "burst": [{"size": "256x256", "references": r, "prompt_chars": 40} for r in (0, 1, 2, 0, 1, 2, 0, 1)],
        "sequential_edits": {"server_s": [10.0, 8.0, 6.0], "diffusers_s": [9.0, 9.0, 9.0],
                             "server_later_over_first": 0.7, "diffusers_later_over_first": 1.0},
    }
    config = {"family": "qwen-image-2.1", "requests": 8, "size": None, "steps": 20, "guidance_scale": 4.0,
              "rounds": 1, "single": 3, "threads": 2}
    machine = {"cpu_model": "Some CPU", "cores": 2, "load_average_start": [1.0, 0, 0], "load_average_end": [3.0, 0, 0]}
    lines = format_table({"config": config, "machine": machine, "checkpoints": {"mid": result}}).splitlines()

    def cells(prefix: str) -> list[str]:
        return next(line for line in lines if line.startswith(prefix)).split()

    assert cells("sequential edits, server: first")[-1] == "10.00/7.00"
    assert cells("sequential edits, server: later vs first")[-1] == "-30.0%"
    assert cells("sequential edits, diffusers: later vs first")[-1] == "+0.0%"
    assert cells("burst: edits")[-3:] == ["3/2", "of", "8"]
    assert cells("load average")[-1] == "1.5/2.5"
    assert lines[-1].startswith("machine: Some CPU, 2 cores") and "1.00 at start, 3.00 at end" in lines[-1]


def test_text_to_image_requests_differ_in_prompt_negative_prompt_and_seed() -> None:
    jobs = TextToImageJobs(64, 48, 8, 4.0, requests=8)
    made = [jobs.single(4.0) for _ in range(10)] + jobs.burst(10)
    for field in ("prompt", "negative_prompt", "seed"):
        assert len({getattr(job, field) for job in made}) == 20
    assert made[0].body("m")["size"] == "64x48" and not made[0].references
    assert jobs.sequential_edits(8) == []


def test_mixed_burst_covers_kinds_sizes_and_prompt_lengths() -> None:
    jobs = MixedJobs(256, 256, 20, 4.0, requests=8).burst(8)
    assert [len(job.references) for job in jobs] == [0, 1, 2, 0, 1, 2, 0, 1]
    assert {(job.width, job.height) for job in jobs} == {(256, 256), (256, 192)}
    lengths = sorted(len(job.prompt) for job in jobs)
    assert lengths[-1] > 4 * lengths[0]  # short and long prompts
    assert len({job.seed for job in jobs}) == 8 and {job.guidance_scale for job in jobs} == {4.0}
    pictures = [png for job in jobs for png in job.references]
    assert len(set(pictures)) == len(pictures) == 7  # no picture twice: no cache helps
    assert Image.open(io.BytesIO(pictures[0])).format == "PNG"


def test_sequential_edits_share_one_new_picture_and_differ_in_instructions() -> None:
    jobs = MixedJobs(64, 64, 4, 4.0, requests=8)
    seen = {png for job in jobs.burst(8) for png in job.references}
    edits = jobs.sequential_edits(8)
    assert len({job.references for job in edits}) == 1 and len(edits[0].references) == 1
    assert edits[0].references[0] not in seen
    assert len({job.prompt for job in edits}) == 8 and len({job.seed for job in edits}) == 8


def test_edit_form_sends_every_reference_as_image_brackets() -> None:
    job = ImageJob(prompt="p", negative_prompt=" ", seed=3, width=64, height=32, steps=2, guidance_scale=4.0,
                   references=(b"a", b"b"))
    fields, files = job.form("m")
    assert fields["size"] == "64x32" and fields["seed"] == "3" and fields["guidance_scale"] == "4.0"
    assert [name for name, _ in files] == ["image[]", "image[]"] and files[1][1][1] == b"b"


def test_reference_pictures_vary_in_aspect_and_content() -> None:
    sizes = [Image.open(io.BytesIO(reference_picture(i, 64, 64))).size for i in range(3)]
    assert sizes == [(64, 64), (80, 64), (64, 80)]
    assert reference_picture(0, 64, 64) != reference_picture(3, 64, 64)
    assert second_size(256, 256) == (256, 192) and second_size(64, 64) == (64, 32)


def test_arguments_default_per_family() -> None:
    parser = argparse.ArgumentParser()
    flow.add_arguments(parser)
    args = parser.parse_args([])
    assert (args.family, args.checkpoints, args.requests) == ("qwen-image", ["tiny", "mid"], 8)
    assert flow._config(args, flow.FAMILIES["qwen-image"]) | {"edits": 0} == {
        "family": "qwen-image", "requests": 8, "size": "64x64", "steps": 8, "guidance_scale": 4.0, "rounds": 3,
        "single": 5, "edits": 0}
    args = parser.parse_args(["--family", "qwen-image-2.1"])
    config = flow._config(args, flow.FAMILIES["qwen-image-2.1"])
    # The checkpoint's own output resolution when no size is given; one round.
    assert (config["size"], config["steps"], config["rounds"], config["single"]) == (None, 20, 1, 3)
    with pytest.raises(SystemExit, match="bad --size"):
        flow._config(parser.parse_args(["--size", "64"]), flow.FAMILIES["qwen-image"])


def test_cpu_model_names_something() -> None:
    assert cpu_model()


def test_process_tree_and_peak_rss_come_from_proc() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert child.pid in process_tree(os.getpid())
        assert peak_rss_bytes(child.pid) > 0 and process_name(child.pid).startswith("python")
    finally:
        child.kill()
        child.wait()
    assert peak_rss_bytes(child.pid) == 0


def test_mid_qwen_image_21_transformer_has_the_stated_size() -> None:
    import torch
    from diffusers import QwenImage21Transformer2DModel

    from diptych.models.qwen_image_21 import tiny

    with torch.device("meta"):  # counted, not allocated
        z_dim = tiny._VAE["z_dim"]
        transformer = QwenImage21Transformer2DModel(**tiny.MID_TRANSFORMER, in_channels=z_dim, out_channels=z_dim,
                                                    context_in_dim=tiny._TEXT["hidden_size"])
    assert sum(p.numel() for p in transformer.parameters()) == 89_539_456
    # The processor admits the references the mid checkpoint resizes to (its side squared).
    assert tiny.MID_OUTPUT_RESOLUTION**2 <= tiny._MAX_PIXELS
