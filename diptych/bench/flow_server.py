"""The server side of ``diptych bench flow``: a ``diptych serve`` subprocess, bursts of requests, memory.

Requests go over real HTTP (httpx), all of a burst sent at once; latency is measured
from the burst's start to each response. A job with reference pictures is an edit
(multipart, one ``image[]`` part per reference), any other a generation (JSON). Peak memory is each process's high-water mark
(``VmHWM``), read from /proc before the server stops: the flow worker (named
``diptych-flow``) and the sum over the server's whole process tree (gateway, flow
worker, vLLM's processes).
"""

from __future__ import annotations

import asyncio
import base64
import io
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image

from diptych.bench.server_process import ServerProcess
from diptych.engine.flow_worker import PROCESS_NAME

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ImageJob:
    """One request of the benchmark, sent to the server and to diffusers alike."""

    prompt: str
    negative_prompt: str
    seed: int
    width: int
    height: int
    steps: int
    guidance_scale: float
    # PNG bytes, sent as they are to the server and decoded from them for diffusers: both
    # sides see the same pixels.
    references: tuple[bytes, ...] = ()

    def body(self, model: str) -> dict[str, Any]:
        return {
            "model": model, "prompt": self.prompt, "negative_prompt": self.negative_prompt, "seed": self.seed,
            "size": f"{self.width}x{self.height}", "num_inference_steps": self.steps,
            "guidance_scale": self.guidance_scale, "response_format": "b64_json", "output_format": "png",
        }

    def form(self, model: str) -> tuple[dict[str, str], list[tuple[str, tuple[str, bytes, str]]]]:
        """An edit's multipart fields (all strings, as a form carries them) and its ``image[]`` files."""
        fields = {key: str(value) for key, value in self.body(model).items()}
        files = [("image[]", (f"reference-{i}.png", png, "image/png")) for i, png in enumerate(self.references)]
        return fields, files


def served_model(url: str) -> str:
    response = httpx.get(f"{url}/v1/models", timeout=30)
    response.raise_for_status()
    return str(response.json()["data"][0]["id"])


def burst(url: str, model: str, jobs: list[ImageJob]) -> tuple[float, list[float], list[np.ndarray]]:
    """All ``jobs`` sent at once: wall time, each one's latency from the start, and the images."""
    return asyncio.run(_burst(url, model, jobs))


async def _burst(url: str, model: str, jobs: list[ImageJob]) -> tuple[float, list[float], list[np.ndarray]]:
    limits = httpx.Limits(max_connections=len(jobs) + 1)
    async with httpx.AsyncClient(base_url=url, timeout=3600, limits=limits) as client:
        start = time.perf_counter()

        async def one(job: ImageJob) -> tuple[float, np.ndarray]:
            if job.references:
                fields, files = job.form(model)
                response = await client.post("/v1/images/edits", data=fields, files=files)
            else:
                response = await client.post("/v1/images/generations", json=job.body(model))
            if response.status_code != 200:
                raise RuntimeError(f"server answered {response.status_code}: {response.text[:500]}")
            latency = time.perf_counter() - start
            png = base64.b64decode(response.json()["data"][0]["b64_json"])
            return latency, as_array(Image.open(io.BytesIO(png)))

        results = await asyncio.gather(*(one(job) for job in jobs))
        wall = time.perf_counter() - start
    return wall, [latency for latency, _ in results], [image for _, image in results]


def as_array(image: Image.Image) -> np.ndarray:
    """RGBA pixels: families that draw alpha are compared on it, the others gain an opaque channel on both sides."""
    return np.asarray(image.convert("RGBA"))


def max_difference(ours: list[np.ndarray], theirs: list[np.ndarray]) -> int:
    """The largest difference of any channel of any pixel between paired images (sizes must match)."""
    worst = 0
    for a, b in zip(ours, theirs, strict=True):
        if a.shape != b.shape:
            raise RuntimeError(f"image shapes differ: server {a.shape}, diffusers {b.shape}")
        worst = max(worst, int(np.abs(a.astype(np.int16) - b.astype(np.int16)).max()))
    return worst


# -- memory ---------------------------------------------------------------------------


def peak_rss_bytes(pid: int) -> int:
    """The process's resident-set high-water mark (VmHWM), or 0 if it is gone."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def process_tree(root: int) -> list[int]:
    """``root`` and all its descendants, from the parent ids in /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry.name))
    tree, frontier = [], [root]
    while frontier:
        pid = frontier.pop()
        tree.append(pid)
        frontier.extend(children.get(pid, []))
    return tree


def process_name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def server_peak_rss(server: ServerProcess) -> dict[str, int | None]:
    """Peak RSS of the flow worker and of the server's whole process tree (None for a server we did not start)."""
    if server.process is None:
        return {"flow_worker": None, "server_total": None}
    tree = process_tree(server.process.pid)
    workers = [pid for pid in tree if process_name(pid) == PROCESS_NAME]
    return {
        "flow_worker": peak_rss_bytes(workers[0]) if workers else None,
        "server_total": sum(peak_rss_bytes(pid) for pid in tree),
    }
