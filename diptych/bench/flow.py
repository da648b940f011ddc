"""``diptych bench flow``: the flow decoder through the server against diffusers' pipeline, side by side.

For each checkpoint (by default a tiny one and a mid-sized one with a ~76M-parameter
transformer, both random, written here), in one run:

* **burst**: N requests (distinct prompts, negative prompts and seeds, so the prompt cache
  never hits) sent at once to a ``diptych serve`` subprocess, against the same N run one
  after another through diffusers' ``QwenImagePipeline`` built from the same checkpoint,
  in a process of its own. ``--rounds`` bursts per side, alternating. Throughput ratio =
  diffusers' time ÷ the server's for the same requests, the median over rounds (the
  machine is shared: pairing back-to-back runs cancels most of other tenants' load).
  Latency p50/p95 is time from the burst's start to each response, and for diffusers to
  each call's return in the loop (the same N arriving at once).
* **single request**: one request at a time through each (``--single`` times, alternating);
  overhead = server latency ÷ pipeline latency − 1, the median over back-to-back pairs.
  Measured with guidance (the
  burst's requests: the server runs both branches in one forward, diffusers in two) and
  without (``guidance_scale`` 1: the same forwards on both sides, so what remains is the
  cost of serving: HTTP, the process hop, PNG encoding, the scheduler).
* **peak RSS**: high-water marks of the flow worker, of all server processes (gateway and
  vLLM's included), and of the diffusers process.
* **agreement**: the largest pixel difference between the server's and diffusers' images.

Prints a table, or with ``--json`` one JSON object.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from diptych.bench.flow_direct import DirectPipeline
from diptych.bench.flow_server import ImageJob, burst, served_model, server_peak_rss
from diptych.bench.server_process import ServerProcess, start_server

logger = logging.getLogger(__name__)

CHECKPOINTS = {
    "tiny": "diptych.models.qwen_image.tiny:write_tiny_qwen_image",
    "mid": "diptych.models.qwen_image.tiny:write_mid_qwen_image",
}
_COLOURS = ("red", "blue", "green", "yellow", "purple", "orange", "black", "white")
_SHAPES = ("circle", "square", "triangle", "star", "cross", "line")
_PLACES = ("on a white background", "next to a tree", "in the middle of the image", "under the sun", "at the top")
_MIB = 1 << 20


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoints", nargs="+", choices=sorted(CHECKPOINTS), default=["tiny", "mid"],
                        help="random checkpoints to write and benchmark (default: tiny mid)")
    parser.add_argument("--model", type=Path, help="benchmark this text-to-image checkpoint instead")
    parser.add_argument("--url", help="use this running server (needs --model: the checkpoint it serves)")
    parser.add_argument("--requests", type=int, default=8, help="requests per burst (default 8)")
    parser.add_argument("--size", default="64x64", help="WIDTHxHEIGHT (default 64x64)")
    parser.add_argument("--steps", type=int, default=8, help="denoising steps (default 8)")
    parser.add_argument("--guidance", type=float, default=4.0, help="guidance scale of the burst (default 4.0)")
    parser.add_argument("--rounds", type=int, default=3, help="bursts per side, alternating (default 3)")
    parser.add_argument("--single", type=int, default=5, help="single-request runs per side and mode (default 5)")
    parser.add_argument("--threads", type=int, help="torch threads of the diffusers process (default: torch's)")
    parser.add_argument("--work-dir", type=Path, help="where checkpoints and logs go (default: a temporary directory)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s bench-flow %(message)s", stream=sys.stderr)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request otherwise
    width, _, height = args.size.lower().partition("x")
    if not (width.isdigit() and height.isdigit()) or args.requests < 1 or args.rounds < 1 or args.single < 1:
        raise SystemExit(f"bad arguments: size {args.size!r}, requests {args.requests}, rounds {args.rounds}, "
                         f"single {args.single}")
    if args.url and not args.model:
        raise SystemExit("--url needs --model: the checkpoint the server serves, for the diffusers side")
    config = {"requests": args.requests, "width": int(width), "height": int(height), "steps": args.steps,
              "guidance_scale": args.guidance, "rounds": args.rounds, "single": args.single}
    with tempfile.TemporaryDirectory(prefix="diptych-bench-flow-") as scratch:
        work_dir = args.work_dir or Path(scratch)
        work_dir.mkdir(parents=True, exist_ok=True)
        targets = [(args.model.name, args.model)] if args.model else [(name, None) for name in args.checkpoints]
        results = {name: _bench_checkpoint(name, model_dir, args, config, work_dir) for name, model_dir in targets}
    report = {"config": {**config, "threads": _torch_threads(args.threads)}, "checkpoints": results}
    sys.stdout.write(json.dumps(report) + "\n" if args.json else format_table(report))
    return 0


def _bench_checkpoint(name: str, model_dir: Path | None, args: argparse.Namespace, config: dict[str, Any],
                      work_dir: Path) -> dict[str, Any]:
    if model_dir is None:
        from diptych.models.registry import load_target

        logger.info("writing the %s checkpoint", name)
        model_dir = load_target(CHECKPOINTS[name])(work_dir / f"{name}-qwen-image", seed=0)
    logger.info("%s: starting the server and the diffusers process", name)
    server = ServerProcess(None, args.url) if args.url else start_server(
        model_dir, work_dir, "--queue-depth", str(max(64, 2 * args.requests)), "--max-steps", "1000",
        "--request-timeout", "3600", "--log-level", "warning", startup_timeout_s=600)
    direct = DirectPipeline(model_dir, args.threads)
    try:
        return _measure(server, direct, model_dir, config)
    finally:
        direct.close()
        server.stop()


def _measure(server: ServerProcess, direct: DirectPipeline, model_dir: Path, config: dict[str, Any]) -> dict[str, Any]:
    model = served_model(server.base_url)
    jobs = _JobMaker(config)
    # First calls pay one-off costs (allocator growth, kernel selection per shape) on both sides:
    # one request of each kind, and for the server one burst (its batched shapes).
    for guidance in (config["guidance_scale"], 1.0):
        burst(server.base_url, model, [jobs.make(guidance)])
        direct.run([jobs.make(guidance)])
    burst(server.base_url, model, [jobs.make(config["guidance_scale"]) for _ in range(config["requests"])])

    server_walls, server_latencies, direct_walls, direct_latencies, diffs = [], [], [], [], []
    for round_index in range(config["rounds"]):
        batch = [jobs.make(config["guidance_scale"]) for _ in range(config["requests"])]
        logger.info("round %d: burst of %d through the server", round_index + 1, len(batch))
        wall, latencies, served = burst(server.base_url, model, batch)
        server_walls.append(wall)
        server_latencies += latencies
        logger.info("round %d: the same %d through diffusers", round_index + 1, len(batch))
        wall, durations, expected = direct.run(batch)
        direct_walls.append(wall)
        direct_latencies += list(np.cumsum(durations))
        diffs += [int(np.abs(a.astype(np.int16) - b.astype(np.int16)).max()) for a, b in zip(served, expected, strict=True)]
        logger.info("round %d: server %.3fs, diffusers %.3fs", round_index + 1, server_walls[-1], direct_walls[-1])

    single: dict[str, dict[str, float]] = {}
    for mode, guidance in (("guided", config["guidance_scale"]), ("unguided", 1.0)):
        server_times, direct_times = [], []
        for _ in range(config["single"]):
            job = jobs.make(guidance)
            server_times.append(burst(server.base_url, model, [job])[0])
            direct_times.append(direct.run([job])[1][0])
        single[mode] = {
            "server_s": statistics.median(server_times),
            "diffusers_s": statistics.median(direct_times),
            # Median of back-to-back pairs: load from other tenants shifts both sides of a pair alike.
            "overhead": statistics.median(s / d - 1 for s, d in zip(server_times, direct_times, strict=True)),
        }
        logger.info("single %s: %s", mode, single[mode])

    total = config["rounds"] * config["requests"]
    return {
        "transformer_parameters": _transformer_parameters(model_dir),
        "server_requests_per_s": total / sum(server_walls),
        "diffusers_requests_per_s": total / sum(direct_walls),
        # Median over rounds of diffusers' time / the server's time for the same requests.
        "throughput_ratio": statistics.median(d / s for s, d in zip(server_walls, direct_walls, strict=True)),
        "server_latency_p50_s": _percentile(server_latencies, 50),
        "server_latency_p95_s": _percentile(server_latencies, 95),
        "diffusers_latency_p50_s": _percentile(direct_latencies, 50),
        "diffusers_latency_p95_s": _percentile(direct_latencies, 95),
        "single": single,
        "peak_rss_bytes": {**server_peak_rss(server), "diffusers": direct.peak_rss()},
        "max_pixel_difference": max(diffs),
    }


class _JobMaker:
    """Requests with distinct prompts, negative prompts and seeds, so no cache on either side helps."""

    def __init__(self, config: dict[str, Any]) -> None:
        self._config = config
        self._count = 0

    def make(self, guidance: float) -> ImageJob:
        k = self._count
        self._count += 1
        colour, shape, place = _COLOURS[k % 8], _SHAPES[k % 6], _PLACES[k % 5]
        return ImageJob(
            prompt=f"a {colour} {shape} {place}, picture {k}",
            negative_prompt=f"blurry, dark, picture {k}",
            seed=1000 + k,
            width=self._config["width"],
            height=self._config["height"],
            steps=self._config["steps"],
            guidance_scale=guidance,
        )


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


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


def format_table(report: dict[str, Any]) -> str:
    config, results = report["config"], report["checkpoints"]
    names = list(results)

    def row(label: str, cell: Any) -> str:
        return f"{label:<46}" + "".join(f"{cell(results[n]):>14}" for n in names) + "\n"

    def mib(key: str) -> Any:
        return lambda r: "n/a" if r["peak_rss_bytes"][key] is None else f"{r['peak_rss_bytes'][key] / _MIB:.0f}"

    def overhead(mode: str) -> Any:
        return lambda r: f"{100 * r['single'][mode]['overhead']:+.1f}%"

    def seconds(key: str, mode: str | None = None) -> Any:
        return lambda r: f"{(r['single'][mode] if mode else r)[key]:.3f}"

    return "".join([
        f"diptych bench flow: {config['requests']} concurrent requests, {config['width']}x{config['height']}, "
        f"{config['steps']} steps, guidance {config['guidance_scale']}; {config['rounds']} rounds, "
        f"{config['single']} single runs; torch threads {config['threads']}\n",
        f"{'checkpoint':<46}" + "".join(f"{n:>14}" for n in names) + "\n",
        row("transformer parameters (M)", lambda r: f"{r['transformer_parameters'] / 1e6:.1f}"),
        row("throughput, server (req/s)", lambda r: f"{r['server_requests_per_s']:.2f}"),
        row("throughput, diffusers one by one (req/s)", lambda r: f"{r['diffusers_requests_per_s']:.2f}"),
        row("throughput ratio (median over rounds)", lambda r: f"{r['throughput_ratio']:.2f}x"),
        row("latency p50 / p95, server (s)",
            lambda r: f"{r['server_latency_p50_s']:.3f}/{r['server_latency_p95_s']:.3f}"),
        row("latency p50 / p95, diffusers one by one (s)",
            lambda r: f"{r['diffusers_latency_p50_s']:.3f}/{r['diffusers_latency_p95_s']:.3f}"),
        row("single request, server (s)", seconds("server_s", "guided")),
        row("single request, diffusers (s)", seconds("diffusers_s", "guided")),
        row("single-request overhead (median of pairs)", overhead("guided")),
        row("single request, no CFG, server (s)", seconds("server_s", "unguided")),
        row("single request, no CFG, diffusers (s)", seconds("diffusers_s", "unguided")),
        row("single-request overhead, no CFG", overhead("unguided")),
        row("peak RSS, flow worker (MiB)", mib("flow_worker")),
        row("peak RSS, all server processes (MiB)", mib("server_total")),
        row("peak RSS, diffusers process (MiB)", mib("diffusers")),
        row("max pixel difference, server vs diffusers", lambda r: f"{r['max_pixel_difference']}"),
    ])
