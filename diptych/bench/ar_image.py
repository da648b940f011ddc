"""``diptych bench ar-image``: Janus-Pro image generation through the server against transformers, side by side.

In one run, on one checkpoint (by default a mid-sized random Janus-Pro written here: a
~75M-parameter language model, 256 image tokens per image; ``--checkpoint tiny`` for the
16-token test checkpoint, where per-request overheads dominate):

* **server**: N generate requests (distinct prompts and seeds, guided) sent at once to a
  ``diptych serve`` subprocess over HTTP; the images come back as PNGs.
* **reference**: the same N requests one at a time through transformers'
  ``JanusForConditionalGeneration.generate(generation_mode="image")`` with the same
  guidance, then its VQ decode and the conversion to an 8-bit image (what the server returns
  too, before PNG encoding), in this process, while the server is idle.

Throughput ratio = the reference's total time ÷ the server's burst time for the same N
images. Latency p50/p95: from the burst's start to each response (server), and from the
loop's start to each call's return (reference: the same N arriving at once, served in
order). Both sides warm up with one request first. Prints a table, or with ``--json``
one JSON object.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from diptych.bench.server_process import start_server

logger = logging.getLogger(__name__)

CHECKPOINTS = {
    "tiny": "diptych.models.janus_pro.tiny:write_tiny_janus_pro",
    "mid": "diptych.models.janus_pro.tiny:write_mid_janus_pro",
}
_COLOURS = ("red", "blue", "green", "yellow", "purple", "orange", "black", "white")
_SHAPES = ("circle", "square", "triangle", "star", "cross", "cat", "house", "tree")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", type=Path, help="a Janus-Pro checkpoint instead of a random one")
    parser.add_argument("--checkpoint", choices=sorted(CHECKPOINTS), default="mid",
                        help="random checkpoint to write (default mid: 256 image tokens, ~75M-parameter LM)")
    parser.add_argument("--requests", type=int, default=16, help="concurrent generate requests (default 16)")
    parser.add_argument("--guidance-scale", type=float, default=5.0)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="diptych-bench-ar-image-") as tmp:
        work = Path(tmp)
        model_dir = args.model
        if model_dir is None:
            import importlib

            module, _, name = CHECKPOINTS[args.checkpoint].partition(":")
            model_dir = getattr(importlib.import_module(module), name)(work / f"{args.checkpoint}-janus-pro", seed=0)
        jobs = [_job(i, args) for i in range(args.requests)]
        # Room for the whole burst in one batch: each guided image is two sequences.
        server = start_server(model_dir, work, "--served-model-name", "bench", "--queue-depth", str(4 * args.requests),
                              "--max-num-seqs", str(2 * args.requests))
        try:
            _post(server.base_url, jobs[0])  # warm-up
            served = _burst(server.base_url, jobs)
        finally:
            server.stop()
        reference = _reference(model_dir, jobs)
    report = {
        "model": str(args.model or f"{args.checkpoint}-janus-pro"),
        "requests": args.requests,
        "guidance_scale": args.guidance_scale,
        "temperature": args.temperature,
        "server": served,
        "reference": reference,
        "throughput_ratio": reference["total_s"] / served["total_s"],
    }
    sys.stdout.write(json.dumps(report) + "\n" if args.json else format_table(report))
    return 0


def _job(index: int, args: argparse.Namespace) -> dict[str, Any]:
    prompt = f"a {_COLOURS[index % len(_COLOURS)]} {_SHAPES[(index // len(_COLOURS)) % len(_SHAPES)]} number {index}"
    return {
        "model": "bench", "prompt": prompt, "n": 1, "seed": index,
        "guidance_scale": args.guidance_scale, "temperature": args.temperature,
    }


def _post(base_url: str, job: dict[str, Any]) -> None:
    response = httpx.post(f"{base_url}/v1/images/generations", json=job, timeout=1800)
    response.raise_for_status()


def _burst(base_url: str, jobs: list[dict[str, Any]]) -> dict[str, float]:
    start = time.perf_counter()

    def one(job: dict[str, Any]) -> float:
        _post(base_url, job)
        return time.perf_counter() - start

    with ThreadPoolExecutor(len(jobs)) as pool:
        latencies = list(pool.map(one, jobs))
    return _summary(latencies, time.perf_counter() - start)


def _reference(model_dir: Path, jobs: list[dict[str, Any]]) -> dict[str, float]:
    import numpy as np
    import torch
    from PIL import Image
    from transformers import AutoProcessor, JanusForConditionalGeneration

    from diptych.models.janus_pro.chat_format import generation_prompt

    processor = AutoProcessor.from_pretrained(model_dir)
    model = JanusForConditionalGeneration.from_pretrained(model_dir).eval()

    def generate(job: dict[str, Any]) -> None:
        torch.manual_seed(job["seed"])
        inputs = processor(text=[generation_prompt(job["prompt"])], generation_mode="image", return_tensors="pt")
        sample = job["temperature"] > 0
        with torch.no_grad():
            tokens = model.generate(
                **inputs, generation_mode="image", guidance_scale=job["guidance_scale"], do_sample=sample,
                **({"temperature": job["temperature"], "top_k": None} if sample else {}),
            )
            pixels = model.decode_image_tokens(tokens).float().numpy()
        Image.fromarray(np.clip((pixels[0] + 1) / 2 * 255, 0, 255).astype(np.uint8))

    generate(jobs[0])  # warm-up
    start = time.perf_counter()
    latencies = []
    for job in jobs:
        generate(job)
        latencies.append(time.perf_counter() - start)
    return _summary(latencies, time.perf_counter() - start)


def _summary(latencies: list[float], total: float) -> dict[str, float]:
    return {
        "total_s": total,
        "images_per_s": len(latencies) / total,
        "p50_s": statistics.median(latencies),
        "p95_s": _percentile(latencies, 0.95),
    }


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def format_table(report: dict[str, Any]) -> str:
    server, reference = report["server"], report["reference"]
    lines = [
        (
            f"ar-image: {report['requests']} generate requests, guidance {report['guidance_scale']}, "
            f"temperature {report['temperature']}, model {report['model']}"
        ),
        f"{'':<28}{'server (burst)':>16}{'transformers (1 at a time)':>28}",
    ]
    for key, label in (("total_s", "total (s)"), ("images_per_s", "images/s"), ("p50_s", "latency p50 (s)"),
                       ("p95_s", "latency p95 (s)")):
        lines.append(f"{label:<28}{server[key]:>16.3f}{reference[key]:>28.3f}")
    lines.append(f"{'throughput ratio':<28}{report['throughput_ratio']:>16.2f}x")
    return "\n".join(lines) + "\n"
