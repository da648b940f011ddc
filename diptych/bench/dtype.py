"""``diptych bench dtype``: a denoising step in bfloat16 against float32 on this CPU, and on AVX2.

In one run, on the mid-sized random Qwen-Image checkpoint (written here; ``--model`` for
another), the flow runner denoises one 256×256 image with guidance (both branches in one
forward) in float32 and in bfloat16, and reports the time of a step and the ratio. It does so
twice, each time in a fresh interpreter: once with this CPU's own instructions, and once
limited to AVX2 (``ATEN_CPU_CAPABILITY=avx2``, ``ONEDNN_MAX_CPU_ISA=AVX2``), as on a CPU
without avx512_bf16 or AMX. This is why ``--dtype auto`` serves float32 on CPU. Prints a
table, or with ``--json`` one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

_ISAS = {"native": {}, "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", type=Path, help="a Qwen-Image checkpoint (default: a mid-sized random one)")
    parser.add_argument("--steps", type=int, default=4, help="timed steps per dtype after one warm-up (default 4)")
    parser.add_argument("--side", type=int, default=256, help="image side (default 256)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)


def run(args: argparse.Namespace) -> int:
    if args.child:
        sys.stdout.write(json.dumps(_time_steps(args.model, args.steps, args.side)) + "\n")
        return 0
    with tempfile.TemporaryDirectory(prefix="diptych-bench-dtype-") as tmp:
        model = args.model
        if model is None:
            from diptych.models.qwen_image.tiny import write_mid_qwen_image

            model = write_mid_qwen_image(Path(tmp) / "mid-qwen-image", seed=0)
        rows = {isa: _child(model, args, env) for isa, env in _ISAS.items()}
    report = {"model": str(args.model or "mid random Qwen-Image"), "side": args.side, "isas": rows}
    if args.json:
        sys.stdout.write(json.dumps(report, indent=2) + "\n")
        return 0
    sys.stdout.write(f"{'instructions':<22} {'float32 s/step':>15} {'bfloat16 s/step':>16} {'bf16 / fp32':>12}\n")
    for isa, row in rows.items():
        ratio = row["bfloat16"] / row["float32"]
        label = f"{isa} ({row['torch_cpu_capability']})"
        sys.stdout.write(f"{label:<22} {row['float32']:>15.3f} {row['bfloat16']:>16.3f} {ratio:>11.2f}x\n")
    return 0


def _child(model: Path, args: argparse.Namespace, env: dict[str, str]) -> dict[str, float]:
    command = [sys.executable, "-m", "diptych.cli", "bench", "dtype", "--child", "--model", str(model),
               "--steps", str(args.steps), "--side", str(args.side)]
    result = subprocess.run(command, env={**os.environ, **env}, capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def _time_steps(model: Path, steps: int, side: int) -> dict[str, Any]:
    import torch

    from diptych.models.qwen_image.flow import QwenImageFlowRunner
    from diptych.types import ImageRequest

    seconds: dict[str, Any] = {"torch_cpu_capability": torch.backends.cpu.get_cpu_capability()}
    for name in ("float32", "bfloat16"):
        runner = QwenImageFlowRunner(model, "cpu", dtype=getattr(torch, name))
        request = ImageRequest("bench", "a red circle next to a blue square", side, side,
                               num_inference_steps=steps + 1, guidance_scale=4.0, seed=0)
        (states,) = runner.prepare([request])
        runner.step(states)  # warm-up
        started = time.perf_counter()
        for _ in range(steps):
            runner.step(states)
        seconds[name] = (time.perf_counter() - started) / steps
    return seconds
