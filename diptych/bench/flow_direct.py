"""The diffusers side of ``diptych bench flow``: the checkpoint's own pipeline in a process of its own.

The pipeline is built from the checkpoint the server loads and runs the same requests one
after another, as a user of diffusers would serve them. ``QwenImagePipeline`` gets the
template prefix the server drops (diffusers hard-codes the real tokenizer's);
``QwenImage21Pipeline`` gets the checkpoint's declared ``output_resolution`` (which the
pipeline cannot read itself) and ``use_kv_cache=True``, and edits with the job's reference
pictures. It lives in its own process so that its peak RSS is its own and it never computes
while the server does; the benchmark drives it through a pipe, alternating with server
measurements.
"""

from __future__ import annotations

import io
import json
import logging
import multiprocessing as mp
import os
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np

from diptych.bench.flow_server import ImageJob, as_array, peak_rss_bytes

logger = logging.getLogger(__name__)


class DirectPipeline:
    """Handle on the child process; ``run`` sends jobs and returns per-call times and images.

    The process starts loading at once; the first call waits for it to be ready, so that it
    can load while the server starts.
    """

    def __init__(self, model_dir: Path, threads: int | None) -> None:
        context = mp.get_context("spawn")
        self._conn, child = context.Pipe()
        self._process = context.Process(target=_serve, args=(str(model_dir), threads, child), name="diptych-bench-direct")
        self._process.start()
        child.close()
        self._ready = False

    def wait_ready(self) -> None:
        if not self._ready:
            self._expect("ready")
            self._ready = True

    def run(self, jobs: list[ImageJob]) -> tuple[float, list[float], list[np.ndarray]]:
        """Jobs one after another: wall time, each call's duration, the images."""
        self.wait_ready()
        self._conn.send(("run", jobs))
        wall, durations, images = self._expect("done")
        return wall, durations, images

    def peak_rss(self) -> int:
        self.wait_ready()
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
        pipe, options = _build(Path(model_dir), threads)
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
                conn.send(("done", _run(pipe, options, payload)))
            elif command == "rss":
                conn.send(("rss", peak_rss_bytes(os.getpid())))
        except Exception as exc:
            conn.send(("error", f"{type(exc).__name__}: {exc}"))


def _build(model_dir: Path, threads: int | None) -> tuple[Any, dict[str, Any]]:
    """The pipeline and the keyword arguments every call of it takes."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    architecture = json.loads((model_dir / "model_index.json").read_text())["_class_name"]
    if architecture == "QwenImage21Pipeline":
        from diptych import compat

        compat.install()  # Qwen3-VL's processor wants torchvision otherwise
        from diffusers import QwenImage21Pipeline

        from diptych.models.qwen_image_21.adapter import QwenImage21Adapter

        pipe = QwenImage21Pipeline.from_pretrained(model_dir)
        options = {"output_resolution": QwenImage21Adapter(model_dir).output_resolution, "use_kv_cache": True}
    elif architecture == "QwenImagePipeline":
        from diffusers import QwenImagePipeline

        from diptych.models.qwen_image.prompt import GENERATE_TEMPLATE, prefix_token_count

        pipe = QwenImagePipeline.from_pretrained(model_dir)
        pipe.prompt_template_encode_start_idx = prefix_token_count(pipe.tokenizer, GENERATE_TEMPLATE)
        options = {}
    else:
        raise ValueError(f"{model_dir}: bench flow compares QwenImagePipeline or QwenImage21Pipeline checkpoints, "
                         f"not {architecture}")
    pipe.set_progress_bar_config(disable=True)
    return pipe, options


def _run(pipe: Any, options: dict[str, Any], jobs: list[ImageJob]) -> tuple[float, list[float], list[np.ndarray]]:
    import torch
    from PIL import Image

    durations, images = [], []
    start = time.perf_counter()
    for job in jobs:
        begin = time.perf_counter()
        # Decoding the references is part of the call, as the server's is part of its request.
        references = {"image": [Image.open(io.BytesIO(png)) for png in job.references]} if job.references else {}
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
            **references,
            **options,
        ).images[0]
        durations.append(time.perf_counter() - begin)
        images.append(as_array(image))
    return time.perf_counter() - start, durations, images
