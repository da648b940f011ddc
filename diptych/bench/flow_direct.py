"""The diffusers side of ``diptych bench flow``: ``QwenImagePipeline`` in a process of its own.

The pipeline is built from the checkpoint the server loads, with the same template
prefix the server drops (diffusers hard-codes the real tokenizer's), and runs the same
requests one after another, as a user of diffusers would serve them. It lives in its own
process so that its peak RSS is its own and it never computes while the server does;
the benchmark drives it through a pipe, alternating with server measurements.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np

from diptych.bench.flow_server import ImageJob, peak_rss_bytes

logger = logging.getLogger(__name__)


class DirectPipeline:
    """Handle on the child process; ``run`` sends jobs and returns per-call times and images."""

    def __init__(self, model_dir: Path, threads: int | None) -> None:
        context = mp.get_context("spawn")
        self._conn, child = context.Pipe()
        self._process = context.Process(target=_serve, args=(str(model_dir), threads, child), name="diptych-bench-direct")
        self._process.start()
        child.close()
        self._expect("ready")

    def run(self, jobs: list[ImageJob]) -> tuple[float, list[float], list[np.ndarray]]:
        """Jobs one after another: wall time, each call's duration, the images."""
        self._conn.send(("run", jobs))
        wall, durations, images = self._expect("done")
        return wall, durations, images

    def peak_rss(self) -> int:
        self._conn.send(("rss", None))
        return int(self._expect("rss"))

    def close(self) -> None:
        if self._process.is_alive():
            self._conn.send(("stop", None))
            self._process.join(30)
        if self._process.is_alive():
            self._process.terminate()
            self._process.join(10)

    def _expect(self, kind: str) -> Any:
        if not self._conn.poll(3600):
            raise RuntimeError("the diffusers process did not answer within an hour")
        got, payload = self._conn.recv()
        if got == "error":
            raise RuntimeError(f"the diffusers process failed: {payload}")
        if got != kind:
            raise RuntimeError(f"expected {kind!r} from the diffusers process, got {got!r}")
        return payload


def _serve(model_dir: str, threads: int | None, conn: Connection) -> None:
    logging.basicConfig(level="WARNING")
    try:
        pipe = _build(Path(model_dir), threads)
        conn.send(("ready", None))
    except Exception as exc:  # report, do not hang the parent
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
        return
    while True:
        command, payload = conn.recv()
        if command == "stop":
            return
        try:
            if command == "run":
                conn.send(("done", _run(pipe, payload)))
            elif command == "rss":
                conn.send(("rss", peak_rss_bytes(os.getpid())))
        except Exception as exc:
            conn.send(("error", f"{type(exc).__name__}: {exc}"))


def _build(model_dir: Path, threads: int | None) -> Any:
    import torch
    from diffusers import QwenImagePipeline

    from diptych.models.qwen_image.prompt import GENERATE_TEMPLATE, prefix_token_count

    if threads:
        torch.set_num_threads(threads)
    pipe = QwenImagePipeline.from_pretrained(model_dir)
    pipe.prompt_template_encode_start_idx = prefix_token_count(pipe.tokenizer, GENERATE_TEMPLATE)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _run(pipe: Any, jobs: list[ImageJob]) -> tuple[float, list[float], list[np.ndarray]]:
    import torch

    durations, images = [], []
    start = time.perf_counter()
    for job in jobs:
        begin = time.perf_counter()
        image = pipe(
            prompt=job.prompt,
            # Our guidance rule (diptych.models.qwen_image.state): CFG exactly when the scale is above 1.
            negative_prompt=job.negative_prompt if job.guidance_scale > 1 else None,
            true_cfg_scale=job.guidance_scale,
            num_inference_steps=job.steps,
            height=job.height,
            width=job.width,
            generator=torch.Generator().manual_seed(job.seed),
            output_type="pil",
        ).images[0]
        durations.append(time.perf_counter() - begin)
        images.append(np.asarray(image.convert("RGB")))
    return time.perf_counter() - start, durations, images
