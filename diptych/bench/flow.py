"""``diptych bench flow``: the flow decoder through the server against diffusers' pipeline, side by side.

For one family (``--family``: Qwen-Image, or Qwen-Image 2.1 and its edits) and each of its
checkpoints (by default a tiny one and a mid-sized one, both random, written here), in one run:

* **burst**: N requests sent at once to a ``diptych serve`` subprocess, against the same N
  run one after another through the checkpoint's diffusers pipeline, built from the same
  checkpoint, in a process of its own. ``--rounds`` bursts per side, alternating. Throughput
  ratio = diffusers' time ÷ the server's for the same requests, the median over rounds (the
  machine is shared: pairing back-to-back runs cancels most of other tenants' load).
  Latency p50/p95 is time from the burst's start to each response, and for diffusers to
  each call's return in the loop (the same N arriving at once). Qwen-Image's bursts are
  text-to-image with distinct prompts, negative prompts and seeds; Qwen-Image 2.1's mix
  generations with edits of one and two references (multipart ``image[]``), two sizes and
  two prompt lengths (``flow_jobs.MixedJobs``).
* **single request**: one request at a time through each (``--single`` times, alternating);
  overhead = server latency ÷ pipeline latency − 1, the median over back-to-back pairs.
  Measured with guidance (the server runs both branches in one forward, diffusers in two)
  and without (``guidance_scale`` 1: the same forwards on both sides, so what remains is the
  cost of serving: HTTP, the process hop, PNG encoding, the scheduler).
* **sequential edits** (families that edit): ``--edits`` edits of one picture with different
  instructions, one after another, through each side; the mean latency of edits 2.. over the
  first's. A server that reuses a picture's work across requests shows it here.
* **peak RSS**: high-water marks of the flow worker, of all server processes (gateway and
  vLLM's included), and of the diffusers process.
* **agreement**: the largest pixel difference (any channel, alpha included) between the
  server's and diffusers' images of the bursts and of the sequential edits.
* **machine**: the CPU model, core count and load average at the start and end of each
  checkpoint's measurement and of the run: with 2 cores, a load above 2 means other work
  shared them.

Prints a table (``flow_report``), or with ``--json`` one JSON object.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from diptych.bench.flow_direct import DirectPipeline
from diptych.bench.flow_jobs import FlowJobs, MixedJobs, TextToImageJobs
from diptych.bench.flow_report import cpu_model, format_table, percentile
from diptych.bench.flow_server import ImageJob, burst, max_difference, served_model, server_peak_rss
from diptych.bench.server_process import ServerProcess, start_server

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Family:
    """What ``bench flow`` runs for one model family, and its defaults."""

    architecture: str  # model_index.json's _class_name
    checkpoints: dict[str, str]  # name → "module:writer(out_dir, seed) -> Path"
    jobs: type[TextToImageJobs]
    size: str | None  # WIDTHxHEIGHT; None: the checkpoint's output_resolution squared
    steps: int
    rounds: int
    single: int


FAMILIES: dict[str, Family] = {
    "qwen-image": Family(
        "QwenImagePipeline",
        {"tiny": "diptych.models.qwen_image.tiny:write_tiny_qwen_image",
         "mid": "diptych.models.qwen_image.tiny:write_mid_qwen_image"},
        TextToImageJobs, "64x64", steps=8, rounds=3, single=5,
    ),
    # One round by default: a mid burst takes minutes on 2 cores, and a run should stay well
    # under 20 of them (docs/benchmarks.md).
    "qwen-image-2.1": Family(
        "QwenImage21Pipeline",
        {"tiny": "diptych.models.qwen_image_21.tiny:write_tiny_qwen_image_21",
         "mid": "diptych.models.qwen_image_21.tiny:write_mid_qwen_image_21"},
        MixedJobs, None, steps=20, rounds=1, single=3,
    ),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--family", choices=sorted(FAMILIES), default="qwen-image",
                        help="model family: its checkpoints, requests and defaults (default qwen-image)")
    parser.add_argument("--checkpoints", nargs="+", choices=["tiny", "mid"], default=["tiny", "mid"],
                        help="random checkpoints of the family to write and benchmark (default: tiny mid)")
    parser.add_argument("--model", type=Path, help="benchmark this checkpoint of the family instead")
    parser.add_argument("--url", help="use this running server (needs --model: the checkpoint it serves)")
    parser.add_argument("--requests", type=int, default=8, help="requests per burst (default 8)")
    parser.add_argument("--size", help="WIDTHxHEIGHT (default: 64x64 for qwen-image, the checkpoint's "
                                       "output resolution squared for qwen-image-2.1)")
    parser.add_argument("--steps", type=int, help="denoising steps (default: 8 for qwen-image, 20 for qwen-image-2.1)")
    parser.add_argument("--guidance", type=float, default=4.0, help="guidance scale of the burst (default 4.0)")
    parser.add_argument("--rounds", type=int, help="bursts per side, alternating (default: 3 for qwen-image, "
                                                   "1 for qwen-image-2.1)")
    parser.add_argument("--single", type=int, help="single-request runs per side and mode (default: 5 for "
                                                   "qwen-image, 3 for qwen-image-2.1)")
    parser.add_argument("--edits", type=int, default=8,
                        help="sequential edits of one picture, for a family that edits (default 8; 0 skips them)")
    parser.add_argument("--threads", type=int, help="torch threads of the diffusers process and, through "
                                                    "OMP_NUM_THREADS, of the server's processes (default: torch's)")
    parser.add_argument("--work-dir", type=Path, help="where checkpoints and logs go (default: a temporary directory)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s bench-flow %(message)s", stream=sys.stderr)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request otherwise
    family = FAMILIES[args.family]
    config = _config(args, family)
    if args.url and not args.model:
        raise SystemExit("--url needs --model: the checkpoint the server serves, for the diffusers side")
    if args.model:
        from diptych.models.registry import architecture_of

        if architecture_of(args.model) != family.architecture:
            raise SystemExit(f"--model {args.model} is a {architecture_of(args.model)} checkpoint; "
                             f"--family {args.family} benchmarks {family.architecture}")
    load_start = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="diptych-bench-flow-") as scratch:
        work_dir = args.work_dir or Path(scratch)
        work_dir.mkdir(parents=True, exist_ok=True)
        targets = [(args.model.name, args.model)] if args.model else [(name, None) for name in args.checkpoints]
        results = {name: _bench_checkpoint(name, model_dir, args, family, config, work_dir)
                   for name, model_dir in targets}
    report = {
        "config": {**config, "threads": _torch_threads(args.threads)},
        "machine": {"cpu_model": cpu_model(), "cores": os.cpu_count(), "load_average_start": list(load_start),
                    "load_average_end": list(os.getloadavg())},
        "checkpoints": results,
    }
    sys.stdout.write(json.dumps(report) + "\n" if args.json else format_table(report))
    return 0


def _config(args: argparse.Namespace, family: Family) -> dict[str, Any]:
    size = args.size or family.size
    steps, rounds = args.steps or family.steps, args.rounds or family.rounds
    single = args.single or family.single
    if size is not None:
        width, _, height = size.lower().partition("x")
        if not (width.isdigit() and height.isdigit()):
            raise SystemExit(f"bad --size {size!r}: WIDTHxHEIGHT")
    if min(args.requests, steps, rounds, single) < 1 or args.edits < 0:
        raise SystemExit(f"bad arguments: requests {args.requests}, steps {steps}, rounds {rounds}, "
                         f"single {single}, edits {args.edits}")
    return {"family": args.family, "requests": args.requests, "size": size, "steps": steps,
            "guidance_scale": args.guidance, "rounds": rounds, "single": single, "edits": args.edits}


def _size(config: dict[str, Any], model_dir: Path) -> tuple[int, int]:
    """The configured size, or the checkpoint's own: its declared output resolution squared."""
    if config["size"] is not None:
        width, _, height = config["size"].lower().partition("x")
        return int(width), int(height)
    from diptych.models.registry import load_adapter

    side = load_adapter(model_dir).capabilities().output_resolution
    if side is None:
        raise SystemExit(f"{model_dir} declares no output resolution: pass --size")
    return side, side


def _bench_checkpoint(name: str, model_dir: Path | None, args: argparse.Namespace, family: Family,
                      config: dict[str, Any], work_dir: Path) -> dict[str, Any]:
    if model_dir is None:
        from diptych.models.registry import load_target

        logger.info("writing the %s %s checkpoint", name, args.family)
        model_dir = load_target(family.checkpoints[name])(work_dir / f"{name}-{args.family}", seed=0)
    width, height = _size(config, model_dir)
    jobs = family.jobs(width, height, config["steps"], config["guidance_scale"], config["requests"])
    logger.info("%s: starting the server and the diffusers process", name)
    direct = DirectPipeline(model_dir, args.threads)  # loads while the server starts
    try:
        server = ServerProcess(None, args.url) if args.url else start_server(
            model_dir, work_dir, "--queue-depth", str(max(64, 2 * args.requests)), "--max-steps", "1000",
            "--request-timeout", "3600", "--log-level", "warning", startup_timeout_s=600,
            env={"OMP_NUM_THREADS": str(args.threads)} if args.threads else None)
    except BaseException:
        direct.close()
        raise
    try:
        direct.wait_ready()
        load_start, began = os.getloadavg(), time.perf_counter()
        result = _measure(server, direct, jobs, config)
        return {
            "size": f"{width}x{height}",
            "transformer_parameters": _transformer_parameters(model_dir),
            **result,
            "peak_rss_bytes": {**server_peak_rss(server), "diffusers": direct.peak_rss()},
            "measure_s": time.perf_counter() - began,
            "load_average_start": list(load_start),
            "load_average_end": list(os.getloadavg()),
        }
    finally:
        direct.close()
        server.stop()


def _measure(server: ServerProcess, direct: DirectPipeline, jobs: FlowJobs, config: dict[str, Any]) -> dict[str, Any]:
    url = server.base_url
    model = served_model(url)
    # First calls pay one-off costs (allocator growth, kernel selection per shape) on both sides:
    # one request of each kind, and for the server one burst (its batched shapes).
    logger.info("warming up")
    for job in jobs.warmup_singles():
        burst(url, model, [job])
        direct.run([job])
    burst(url, model, jobs.warmup_burst())

    server_walls, server_latencies, direct_walls, direct_latencies = [], [], [], []
    served, expected, batch = [], [], []
    for round_index in range(config["rounds"]):
        batch = jobs.burst(config["requests"])
        logger.info("round %d: burst of %d through the server", round_index + 1, len(batch))
        wall, latencies, images = burst(url, model, batch)
        server_walls.append(wall)
        server_latencies += latencies
        served += images
        logger.info("round %d: the same %d through diffusers", round_index + 1, len(batch))
        wall, durations, images = direct.run(batch)
        direct_walls.append(wall)
        direct_latencies += list(np.cumsum(durations))
        expected += images
        logger.info("round %d: server %.3fs, diffusers %.3fs", round_index + 1, server_walls[-1], direct_walls[-1])

    single: dict[str, dict[str, float]] = {}
    for mode, guidance in (("guided", config["guidance_scale"]), ("unguided", 1.0)):
        server_times, direct_times = [], []
        for _ in range(config["single"]):
            job = jobs.single(guidance)
            server_times.append(burst(url, model, [job])[0])
            direct_times.append(direct.run([job])[1][0])
        single[mode] = {
            "server_s": statistics.median(server_times),
            "diffusers_s": statistics.median(direct_times),
            # Median of back-to-back pairs: load from other tenants shifts both sides of a pair alike.
            "overhead": statistics.median(s / d - 1 for s, d in zip(server_times, direct_times, strict=True)),
        }
        logger.info("single %s: %s", mode, single[mode])

    result: dict[str, Any] = {}
    edits = jobs.sequential_edits(config["edits"])
    if edits:
        result["sequential_edits"], edit_served, edit_expected = _sequential_edits(url, model, direct, edits)
        served, expected = served + edit_served, expected + edit_expected

    total = config["rounds"] * config["requests"]
    return {
        "burst": [{"size": f"{j.width}x{j.height}", "references": len(j.references), "prompt_chars": len(j.prompt)}
                  for j in batch],
        "server_requests_per_s": total / sum(server_walls),
        "diffusers_requests_per_s": total / sum(direct_walls),
        # Median over rounds of diffusers' time / the server's time for the same requests.
        "throughput_ratio": statistics.median(d / s for s, d in zip(server_walls, direct_walls, strict=True)),
        "server_latency_p50_s": percentile(server_latencies, 50),
        "server_latency_p95_s": percentile(server_latencies, 95),
        "diffusers_latency_p50_s": percentile(direct_latencies, 50),
        "diffusers_latency_p95_s": percentile(direct_latencies, 95),
        "single": single,
        **result,
        "max_pixel_difference": max_difference(served, expected),
    }


def _sequential_edits(url: str, model: str, direct: DirectPipeline,
                      edits: list[ImageJob]) -> tuple[dict[str, Any], list[np.ndarray], list[np.ndarray]]:
    """The edits one after another through the server, then through diffusers: latencies and images."""
    logger.info("%d sequential edits of one picture through the server", len(edits))
    server_times, served = [], []
    for job in edits:
        wall, _, images = burst(url, model, [job])
        server_times.append(wall)
        served += images
    logger.info("the same %d edits through diffusers", len(edits))
    _, direct_times, expected = direct.run(edits)
    report: dict[str, Any] = {"server_s": server_times, "diffusers_s": direct_times}
    for side, times in (("server", server_times), ("diffusers", direct_times)):
        rest = statistics.mean(times[1:]) if len(times) > 1 else times[0]
        # Below 1 when later edits of the picture cost less than the first.
        report[f"{side}_later_over_first"] = rest / times[0]
    logger.info("sequential edits: %s", report)
    return report, served, expected


def _transformer_parameters(model_dir: Path) -> int:
    from safetensors import safe_open

    count = 0
    for path in sorted((model_dir / "transformer").glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as weights:
            for key in weights.keys():  # noqa: SIM118 - safe_open has keys(), not iteration
                count += int(np.prod(weights.get_slice(key).get_shape()))
    return count


def _torch_threads(requested: int | None) -> int:
    import torch

    return requested or torch.get_num_threads()
