"""``diptych bench startup``: the AR engine's first start and decode speed, eager against compiled.

In one run, on one checkpoint (the embedded default unless ``--model``), for each mode:

* **start**: ``AREngine.start()`` from nothing: an empty vLLM cache directory
  (``VLLM_CACHE_ROOT``) and an empty staging directory, as on a fresh clone. Compiled mode
  pays vLLM's torch.compile warm-up here; eager mode skips it.
* **decode**: after one warm-up request, ``--requests`` chats about a picture sent at once,
  each decoding exactly ``--max-tokens`` tokens (``ignore_eos``); throughput is completion
  tokens per second of the burst.

Then the same for a second start of compiled mode on the cache the first one filled (what a
restart on the same host pays). Prints a table, or with ``--json`` one JSON object.
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
from pathlib import Path
from typing import Any

from diptych.bench.load.inputs import builtin_images

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", type=Path, help="checkpoint directory (default: the embedded default model)")
    parser.add_argument("--requests", type=int, default=8, help="concurrent chats in the decode burst (default 8)")
    parser.add_argument("--max-tokens", type=int, default=64, help="tokens each chat decodes (default 64)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.WARNING)
    from diptych.models.default import default_checkpoint

    model_dir = args.model or default_checkpoint()
    with tempfile.TemporaryDirectory(prefix="diptych-bench-startup-") as tmp:
        work = Path(tmp)
        runs = [
            _measure(model_dir, work / "eager", work / "eager-cache", eager=True, args=args),
            _measure(model_dir, work / "compiled", work / "compiled-cache", eager=False, args=args),
            _measure(model_dir, work / "compiled-again", work / "compiled-cache", eager=False, args=args),
        ]
    runs[2]["mode"] = "compiled, warm cache"
    report = {"model": str(model_dir), "requests": args.requests, "max_tokens": args.max_tokens, "runs": runs,
              "decode_ratio_compiled_over_eager": runs[1]["tokens_per_s"] / runs[0]["tokens_per_s"]}
    if args.json:
        sys.stdout.write(json.dumps(report, indent=2) + "\n")
    else:
        sys.stdout.write(f"{'mode':<22} {'start s':>8} {'tokens/s':>9}\n")
        for r in runs:
            sys.stdout.write(f"{r['mode']:<22} {r['start_s']:>8.1f} {r['tokens_per_s']:>9.1f}\n")
        sys.stdout.write(f"decode, compiled / eager: {report['decode_ratio_compiled_over_eager']:.2f}x\n")
    return 0


def _measure(model_dir: Path, cache_dir: Path, vllm_cache: Path, *, eager: bool,
             args: argparse.Namespace) -> dict[str, Any]:
    # vLLM reads its cache root from the environment, in this process and the ones it starts.
    previous = os.environ.get("VLLM_CACHE_ROOT")
    os.environ["VLLM_CACHE_ROOT"] = str(vllm_cache)
    try:
        return asyncio.run(_start_and_decode(model_dir, cache_dir, eager=eager, args=args))
    finally:
        if previous is None:
            os.environ.pop("VLLM_CACHE_ROOT", None)
        else:
            os.environ["VLLM_CACHE_ROOT"] = previous


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

    try:
        await chat(0)  # warm-up
        started = time.perf_counter()
        tokens = sum(await asyncio.gather(*(chat(i) for i in range(args.requests))))
        burst_s = time.perf_counter() - started
    finally:
        await engine.shutdown()
    return {"mode": "eager" if eager else "compiled", "start_s": start_s, "burst_s": burst_s,
            "completion_tokens": tokens, "tokens_per_s": tokens / burst_s}
