"""The flow client against a real worker process on the tiny text-to-image checkpoint:
crash recovery (SIGKILL mid-job) and the worker's immunity to a terminal's Ctrl+C."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import pytest_asyncio

from diptych.engine.errors import EngineUnavailableError
from diptych.engine.flow_client import FlowClient
from diptych.types import EngineConfig, ImageProgress, ImageRequest, ImagesFinished, Limits
from tests.conftest import TinyCheckpoint

SESSION_LOOP = pytest.mark.asyncio(loop_scope="session")


@pytest.fixture(scope="module")
def checkpoint(tiny_checkpoint: TinyCheckpoint) -> Path:
    return tiny_checkpoint("qwen-image")


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def client(checkpoint: Path) -> AsyncIterator[FlowClient]:
    limits = Limits(max_image_side=256, max_n=2, max_steps=1000, max_prompt_tokens=256, max_output_tokens=16,
                    max_images_per_request=1, queue_depth=8, request_timeout_s=120.0)
    config = EngineConfig(model_dir=checkpoint, served_name="tiny", device="cpu", dtype="auto", cache_dir=checkpoint,
                          kv_cache_gib=0.1, max_model_len=256, max_num_seqs=1, ar_startup_timeout_s=300.0,
                          limits=limits)
    flow = FlowClient(config, log_level="WARNING")
    await flow.start()
    yield flow
    await flow.shutdown()
    assert flow.health_state == "down"


def _request(request_id: str, steps: int) -> ImageRequest:
    return ImageRequest(request_id=request_id, prompt="a red square", width=64, height=64,
                        num_inference_steps=steps, guidance_scale=1.0, seed=1)


async def _finish(flow: FlowClient, request: ImageRequest) -> ImagesFinished:
    last = None
    async for event in flow.run(request):
        last = event
    assert isinstance(last, ImagesFinished)
    return last


async def _wait_for(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


def _sigint_blocked_in(pid: int) -> bool:
    status = Path(f"/proc/{pid}/status").read_text()
    blocked = int(next(line for line in status.splitlines() if line.startswith("SigBlk:")).split()[1], 16)
    return bool(blocked & (1 << (signal.SIGINT - 1)))


@SESSION_LOOP
async def test_a_killed_worker_fails_its_jobs_with_503_and_is_replaced(client: FlowClient) -> None:
    await _finish(client, _request("warm-up", 2))
    old_pid = client.worker_pid
    assert old_pid is not None

    events: list[object] = []

    async def long_job() -> None:
        async for event in client.run(_request("doomed", 100_000)):
            events.append(event)

    job = asyncio.create_task(long_job())
    await _wait_for(lambda: any(isinstance(e, ImageProgress) for e in events), 60, "the job to step")
    os.kill(old_pid, signal.SIGKILL)
    killed_at = time.monotonic()
    with pytest.raises(EngineUnavailableError):
        await asyncio.wait_for(job, 5)
    assert time.monotonic() - killed_at < 5
    assert client.health_state == "restarting"
    with pytest.raises(EngineUnavailableError):  # refused, not queued, while the worker is replaced
        await _finish(client, _request("meanwhile", 2))

    await _wait_for(lambda: client.health_state == "ok", 180, "the worker to be replaced")
    assert client.worker_pid not in (None, old_pid)
    assert client.restarts == 1
    finished = await _finish(client, _request("after", 2))
    assert finished.images[0].size == (64, 64)


@SESSION_LOOP
async def test_the_worker_does_not_see_sigint(client: FlowClient) -> None:
    pid = client.worker_pid
    assert pid is not None and _sigint_blocked_in(pid)
    assert not _sigint_blocked_in(os.getpid())  # only the child: this thread still gets Ctrl+C
    os.kill(pid, signal.SIGINT)
    await _finish(client, _request("after-sigint", 2))
    assert client.worker_pid == pid and client.health_state == "ok"
