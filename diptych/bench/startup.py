"""``diptych bench startup``: first start and decode speed, eager against compiled.

In one run, on one checkpoint (the embedded default unless ``--model``), for each of
``--ar-compile eager`` and ``compiled``, with empty caches as on a fresh clone (vLLM's
``VLLM_CACHE_ROOT``, torch inductor's ``TORCHINDUCTOR_CACHE_DIR``, Diptych's staging):

* **healthy**: seconds from launching ``diptych serve`` to ``/health`` answering ok;
* **engine start**: ``AREngine.start()`` alone;
* **decode**: after one warm-up request, ``--rounds`` bursts of ``--requests`` chats about a
  picture sent at once to the engine, each decoding exactly ``--max-tokens`` tokens
  (``ignore_eos``); throughput is completion tokens per second of the median burst.

Then compiled mode's engine start again on the caches its first start filled (what a restart
on the same host pays). Prints a table, or with ``--json`` one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import io
import json
import logging
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from diptych.bench.load.inputs import builtin_images

logger = logging.getLogger(__name__)

T = TypeVar("T")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", type=Path, help="checkpoint directory (default: the embedded default model)")
    parser.add_argument("--requests", type=int, default=16, help="concurrent chats in the decode burst (default 16)")
    parser.add_argument("--max-tokens", type=int, default=128, help="tokens each chat decodes (default 128)")
    parser.add_argument("--rounds", type=int, default=5, help="decode bursts per mode; the median counts (default 5)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.WARNING)
    # vLLM logs to stdout unless told otherwise; stdout is the report's.
    os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")
    from diptych.models.default import default_checkpoint

    model_dir = args.model or default_checkpoint()
    with tempfile.TemporaryDirectory(prefix="diptych-bench-startup-") as tmp:
        work = Path(tmp)
        runs = []
        for mode in ("eager", "compiled"):
            healthy_s = _with_caches(work / f"{mode}-server", lambda: _time_to_healthy(model_dir, work, mode))
            run = _with_caches(work / mode, lambda: asyncio.run(
                _start_and_decode(model_dir, work / f"{mode}-engine", eager=mode == "eager", args=args)))
            runs.append({"mode": mode, "healthy_s": healthy_s, **run})
        # The same staging path as the first compiled start: vLLM's compile cache is keyed by it.
        again = _with_caches(work / "compiled", lambda: asyncio.run(
            _start_and_decode(model_dir, work / "compiled-engine", eager=False, args=args)))
        runs.append({"mode": "compiled, warm cache", "healthy_s": None, **again})
    report = {"model": str(model_dir), "requests": args.requests, "max_tokens": args.max_tokens, "runs": runs,
              "decode_ratio_compiled_over_eager": runs[1]["tokens_per_s"] / runs[0]["tokens_per_s"]}
    if args.json:
        sys.stdout.write(json.dumps(report, indent=2) + "\n")
    else:
        sys.stdout.write(f"{'mode':<22} {'healthy s':>9} {'engine s':>8} {'tokens/s':>9}\n")
        for r in runs:
            healthy = "-" if r["healthy_s"] is None else f"{r['healthy_s']:.1f}"
            sys.stdout.write(f"{r['mode']:<22} {healthy:>9} {r['start_s']:>8.1f} {r['tokens_per_s']:>9.1f}\n")
        sys.stdout.write(f"decode, compiled / eager: {report['decode_ratio_compiled_over_eager']:.2f}x\n")
    return 0


_CACHE_VARIABLES = ("VLLM_CACHE_ROOT", "TORCHINDUCTOR_CACHE_DIR")


def _with_caches(root: Path, measure: Callable[[], T]) -> T:
    """``measure()`` with vLLM's and inductor's caches under ``root`` (read from the environment,
    in this process and in the ones it starts)."""
    previous = {name: os.environ.get(name) for name in _CACHE_VARIABLES}
    os.environ.update({name: str(root / name.lower()) for name in _CACHE_VARIABLES})
    try:
        return measure()
    finally:
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _time_to_healthy(model_dir: Path, work: Path, mode: str) -> float:
    from diptych.bench.server_process import start_server

    server_dir = work / f"{mode}-serve"
    server_dir.mkdir()
    started = time.perf_counter()
    server = start_server(model_dir, server_dir, "--ar-compile", mode, poll_s=0.25)
    healthy_s = time.perf_counter() - started
    server.stop()
    return healthy_s


async def _start_and_decode(model_dir: Path, cache_dir: Path, *, eager: bool,
                            args: argparse.Namespace) -> dict[str, Any]:
    from PIL import Image

    from diptych.engine.ar_engine import AREngine
    from diptych.models.registry import load_adapter
    from diptych.settings import Settings
    from diptych.types import ChatFinished, ChatMessage, ImagePart, SamplingOptions, TextPart

    adapter = load_adapter(model_dir)
    config = Settings(model=model_dir, cache_dir=cache_dir, kv_cache_gib=0.5).engine_config(model_dir, model_dir.name)
    ar_dir = adapter.prepare_ar_model(cache_dir / "staging")
    if ar_dir is None:
        raise SystemExit(f"{model_dir} has no AR model to start")
    engine = AREngine(ar_dir, config, enforce_eager=eager)
    started = time.perf_counter()
    await engine.start()
    start_s = time.perf_counter() - started
    pictures = [Image.open(io.BytesIO(image.data)).convert("RGB") for image in builtin_images(args.requests)]
    sampling = SamplingOptions(max_tokens=args.max_tokens, temperature=1.0, seed=0, ignore_eos=True)

    async def chat(index: int) -> int:
        messages = (ChatMessage("user", (ImagePart(pictures[index]), TextPart("describe the picture"))),)
        tokens = 0
        async for event in engine.generate(adapter.render_chat(messages), dataclasses.replace(sampling, seed=index),
                                           f"bench-{index}"):
            if isinstance(event, ChatFinished):
                tokens = event.completion_tokens
        return tokens

    bursts = []
    try:
        await chat(0)  # warm-up
        for _ in range(args.rounds):
            started = time.perf_counter()
            tokens = sum(await asyncio.gather(*(chat(i) for i in range(args.requests))))
            bursts.append((time.perf_counter() - started, tokens))
    finally:
        await engine.shutdown()
    burst_s, tokens = sorted(bursts)[len(bursts) // 2]  # the median burst
    return {"start_s": start_s, "burst_s": burst_s, "completion_tokens": tokens, "tokens_per_s": tokens / burst_s}
