"""The flow client against real worker processes on the tiny text-to-image checkpoint: crash
recovery (SIGKILL mid-job), the worker's immunity to a terminal's Ctrl+C, and a pool of two
CPU workers (``--flow-devices cpu,cpu``): dispatch, a killed worker beside a serving one,
per-worker health and metrics, and images equal to one worker's."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import numpy as np

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


def _config(checkpoint: Path, flow_devices: tuple[str, ...] = ()) -> EngineConfig:
    limits = Limits(max_image_side=256, max_n=2, max_steps=1000, max_prompt_tokens=256, max_output_tokens=16,
                    max_images_per_request=1, queue_depth=8, request_timeout_s=120.0)
    return EngineConfig(model_dir=checkpoint, served_name="tiny", device="cpu", dtype="auto", cache_dir=checkpoint,
                        kv_cache_gib=0.1, max_model_len=256, max_num_seqs=1, ar_startup_timeout_s=300.0,
                        limits=limits, flow_devices=flow_devices)


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def client(checkpoint: Path) -> AsyncIterator[FlowClient]:
    flow = FlowClient(_config(checkpoint), log_level="WARNING")
    await flow.start()
    yield flow
    await flow.shutdown()
    assert flow.health_state == "down"


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def pool(checkpoint: Path) -> AsyncIterator[FlowClient]:
    flow = FlowClient(_config(checkpoint, ("cpu", "cpu")), log_level="WARNING")
    await flow.start()
    yield flow
    await flow.shutdown()
    assert [w.health_state for w in flow.workers] == ["down", "down"]


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
    old_pid = client.workers[0].worker_pid
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
    assert client.workers[0].worker_pid not in (None, old_pid)
    assert client.restarts == 1
    finished = await _finish(client, _request("after", 2))
    assert finished.images[0].size == (64, 64)


@SESSION_LOOP
async def test_the_worker_does_not_see_sigint(client: FlowClient) -> None:
    pid = client.workers[0].worker_pid
    assert pid is not None and _sigint_blocked_in(pid)
    assert not _sigint_blocked_in(os.getpid())  # only the child: this thread still gets Ctrl+C
    os.kill(pid, signal.SIGINT)
    await _finish(client, _request("after-sigint", 2))
    assert client.workers[0].worker_pid == pid and client.health_state == "ok"


def _pixels(image: Any) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


@SESSION_LOOP
async def test_a_pool_splits_the_cores_and_serves_interleaved_requests_as_one_worker_does(
    pool: FlowClient, client: FlowClient
) -> None:
    assert [(w.device, w.cpus) for w in pool.workers] == [("cpu", (0,)), ("cpu", (1,))]
    for worker in pool.workers:
        assert worker.worker_pid is not None and os.sched_getaffinity(worker.worker_pid) == set(worker.cpus or ())
    requests = [dataclasses.replace(_request(f"pooled-{i}", 3), seed=i) for i in range(4)]
    before = [w.steps_total for w in pool.workers]
    pooled = await asyncio.gather(*(_finish(pool, r) for r in requests))
    await _wait_for(lambda: all(w.steps_total > b for w, b in zip(pool.workers, before, strict=True)), 5,
                    "both workers' step counts")  # each took some of the four
    alone = [await _finish(client, dataclasses.replace(r, request_id=f"alone-{i}")) for i, r in enumerate(requests)]
    for ours, reference in zip(pooled, alone, strict=True):
        # One thread instead of torch's two may sum in another order: within one level.
        assert np.abs(_pixels(ours.images[0]) - _pixels(reference.images[0])).max() <= 1


@SESSION_LOOP
async def test_a_killed_worker_fails_only_its_own_request_and_comes_back(pool: FlowClient) -> None:
    from diptych.engine.orchestrator import Orchestrator
    from diptych.server.metrics import _worker_metrics
    from tests.engine.test_orchestrator import StubAdapter

    events: dict[str, list[object]] = {"a": [], "b": []}

    async def long_job(name: str) -> None:
        async for event in pool.run(_request(name, 100_000)):
            events[name].append(event)

    jobs = {name: asyncio.create_task(long_job(name)) for name in events}
    await _wait_for(lambda: all(any(isinstance(e, ImageProgress) for e in got) for got in events.values()), 60,
                    "both jobs to step")
    assert [w.images_in_flight for w in pool.workers] == [1, 1]  # least loaded: one each
    victim, survivor = pool.workers
    old_pid = victim.worker_pid
    assert old_pid is not None
    os.kill(old_pid, signal.SIGKILL)
    done, _ = await asyncio.wait(jobs.values(), timeout=5, return_when=asyncio.FIRST_COMPLETED)
    (failed,) = [name for name, job in jobs.items() if job in done]
    with pytest.raises(EngineUnavailableError):
        jobs[failed].result()
    (going,) = set(events) - {failed}
    # At once, while the dead worker is being replaced: the pool serves while one worker does,
    # health stays ok, and the dead one is reported on its own.
    assert pool.health_state == "ok" and victim.health_state == "restarting" and survivor.health_state == "ok"
    engine = Orchestrator(_config(Path(".")), StubAdapter(False), ar=None, flow=pool)  # type: ignore[arg-type]
    health = engine.health()
    assert health.state == "ok" and health.components["flow.0"] == "restarting" and health.components["flow.1"] == "ok"
    up = {tuple(s.labels.values()): s.value for f in _worker_metrics(engine.stats()) for s in f.samples
          if s.name == "diptych_flow_worker_up"}
    assert up == {("0", "cpu"): 0.0, ("1", "cpu"): 1.0}
    steps = len(events[going])
    await _wait_for(lambda: len(events[going]) > steps + 2, 30, "the other job to keep stepping")
    finished = await _finish(pool, _request("meanwhile", 2))  # goes to the survivor
    assert finished.images[0].size == (64, 64)
    jobs[going].cancel()
    await asyncio.gather(jobs[going], return_exceptions=True)
    await _wait_for(lambda: victim.health_state == "ok", 180, "the dead worker to be replaced")
    assert victim.worker_pid not in (None, old_pid) and victim.restarts == 1 and pool.restarts == 1
    assert os.sched_getaffinity(victim.worker_pid or 0) == {0}  # the replacement keeps its share
