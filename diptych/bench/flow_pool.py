"""``diptych bench flow-pool``: two CPU flow workers of one core each against one worker on both cores.

The CPU stand-in for the multi-GPU replica curve. For each Qwen-Image checkpoint (by default a
tiny one and a mid-sized one, both random, written here), in one run: a ``diptych serve``
with ``--flow-devices cpu,cpu`` and one with the default single worker (torch's threads on
every core) take the same closed-loop text-to-image load from ``diptych bench load``, one
server after the other, and the run reports each one's requests/s and images/s and their
ratio. What it shows: whether splitting the cores between two independent decoders beats
one decoder batching on all of them, on this CPU. What it does not: GPU replicas, where each
worker has a device of its own and nothing is split.

Prints a table, or with ``--json`` one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from diptych.bench.flow_report import cpu_model
from diptych.bench.server_process import serving

SETUPS = {"two workers, 1 core each": ("--flow-devices", "cpu,cpu"), "one worker, 2 cores": ()}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoints", nargs="+", choices=("tiny", "mid"), default=["tiny", "mid"],
                        help="Qwen-Image checkpoints to write and serve (default: both)")
    parser.add_argument("--concurrency", type=int, default=4, help="requests in flight (default 4)")
    parser.add_argument("--requests", type=int, default=16, help="requests per server (default 16)")
    parser.add_argument("--steps", type=int, default=8, help="denoising steps (default 8)")
    parser.add_argument("--size", default="128x128", help="image size (default 128x128)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")


def run(args: argparse.Namespace) -> int:
    from diptych.models.qwen_image.tiny import write_mid_qwen_image, write_tiny_qwen_image

    writers = {"tiny": write_tiny_qwen_image, "mid": write_mid_qwen_image}
    report: dict[str, Any] = {"cpu": cpu_model(), "cores": len(os.sched_getaffinity(0)), "checkpoints": {},
                              "config": {k: getattr(args, k) for k in ("concurrency", "requests", "steps", "size")}}
    with tempfile.TemporaryDirectory(prefix="diptych-flow-pool-") as tmp:
        work = Path(tmp)
        for name in args.checkpoints:
            checkpoint = writers[name](work / name)
            results = {}
            for index, (setup, flags) in enumerate(SETUPS.items()):
                run_dir = work / f"{name}-{index}"
                run_dir.mkdir()
                load_before = os.getloadavg()
                with serving(checkpoint, run_dir, *flags) as server:
                    results[setup] = {**_load(server.base_url, args, run_dir / "load"),
                                      "load_average": [load_before[0], os.getloadavg()[0]]}
            pool, one = (results[s]["requests_per_s"] for s in SETUPS)
            report["checkpoints"][name] = {"setups": results, "ratio": pool / one if one else None}
    sys.stdout.write(json.dumps(report, indent=2) + "\n" if args.json else _table(report))
    return 0


def _load(url: str, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """One closed-loop point of ``diptych bench load``'s generate scenario (warm-up first)."""
    command = [sys.executable, "-m", "diptych.cli", "bench", "load", "--url", url, "--scenario", "generate",
               "--concurrency", str(args.concurrency), "--requests", str(args.requests), "--steps", str(args.steps),
               "--size", args.size, "--partial-images", "0", "--warmup", "2", "--json", "--no-progress",
               "--out", str(out)]
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    (point,) = json.loads(result.stdout)["points"]
    summary = point["summary"]
    return {key: summary[key] for key in ("requests", "ok", "requests_per_s", "images_per_s")}


def _table(report: dict[str, Any]) -> str:
    config = report["config"]
    lines = [f"CPU: {report['cpu']} ({report['cores']} cores); generate {config['size']}, {config['steps']} steps, "
             f"{config['requests']} requests at concurrency {config['concurrency']}", "",
             "| checkpoint | setup | ok | requests/s | images/s | load avg before → after |", "|---|---|---|---|---|---|"]
    for name, result in report["checkpoints"].items():
        for setup, row in result["setups"].items():
            before, after = row["load_average"]
            lines.append(f"| {name} | {setup} | {row['ok']}/{row['requests']} | {row['requests_per_s']:.3f} "
                         f"| {row['images_per_s']:.3f} | {before:.2f} → {after:.2f} |")
        ratio = result["ratio"]
        lines.append(f"| {name} | ratio two / one | | {'–' if ratio is None else f'{ratio:.2f}×'} | | |")
    return "\n".join(lines) + "\n"
