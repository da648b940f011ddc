"""The memory plan: safetensors headers against the tensors themselves, and its arithmetic with a faked device."""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from pathlib import Path

import pytest

from diptych.engine import memory_plan as mp
from diptych.engine.memory_plan import (
    GIB,
    HEADROOM_PER_ENGINE,
    DeviceMemory,
    MemoryPlanError,
    apply_plan,
    parameter_counts,
    plan_memory,
    read_header,
    weight_bytes,
)
from diptych.models.registry import load_adapter
from diptych.settings import Settings
from diptych.types import EngineConfig
from tests.conftest import TinyCheckpoint

_STORED_NAMES = {"float32": "F32", "float16": "F16", "bfloat16": "BF16", "int64": "I64"}


def _fake(free_gib: float, total_gib: float = 24.0) -> Callable[[str], DeviceMemory]:
    return lambda device: DeviceMemory(int(free_gib * GIB), int(total_gib * GIB))


@pytest.mark.parametrize("family", ["qwen-image", "janus-pro"])
def test_header_counts_are_those_of_the_loaded_tensors(tiny_checkpoint: TinyCheckpoint, family: str) -> None:
    from safetensors.torch import load_file

    weights = load_adapter(tiny_checkpoint(family)).weight_files()
    assert set(weights) == {"ar", "flow"}
    for parts in weights.values():
        for part in parts:
            assert part.files
            counts: dict[str, int] = {}
            stored = 0
            for path in part.files:
                for name, tensor in load_file(path).items():
                    if part.keeps(name):
                        key = _STORED_NAMES[str(tensor.dtype).removeprefix("torch.")]
                        counts[key] = counts.get(key, 0) + tensor.numel()
                        stored += tensor.numel() * tensor.element_size()
            assert parameter_counts(part) == counts, part.component
            assert weight_bytes(counts, "auto") == stored


def test_weight_bytes_casts_floating_tensors_only() -> None:
    counts = {"BF16": 10, "F32": 3, "I64": 2}
    assert weight_bytes(counts, "auto") == 10 * 2 + 3 * 4 + 2 * 8
    assert weight_bytes(counts, "float32") == 13 * 4 + 2 * 8
    assert weight_bytes(counts, "bfloat16") == weight_bytes(counts, "float16") == 13 * 2 + 2 * 8
    with pytest.raises(ValueError, match="'int8' is not one of auto, float32"):
        weight_bytes(counts, "int8")


def test_malformed_headers_are_refused(tmp_path: Path) -> None:
    short, long, listed, garbled = (tmp_path / name for name in ("short", "long", "listed", "garbled"))
    short.write_bytes(b"\x01\x02")
    long.write_bytes(struct.pack("<Q", 1000) + b"{}")
    body = json.dumps([1]).encode()
    listed.write_bytes(struct.pack("<Q", len(body)) + body)
    garbled.write_bytes(struct.pack("<Q", 4) + b"\xff{x}")
    for path, reason in ((short, "shorter"), (long, "past the file's end"), (listed, "not a JSON object"),
                         (garbled, "not JSON")):
        with pytest.raises(ValueError, match=reason):
            read_header(path)


def test_plan_on_one_gpu_fits_and_gives_the_flow_worker_half_of_the_rest(tiny_checkpoint: TinyCheckpoint) -> None:
    weights = load_adapter(tiny_checkpoint("qwen-image")).weight_files()
    seen: list[str] = []

    def memory(device: str) -> DeviceMemory:
        seen.append(device)
        return DeviceMemory(10 * GIB, 24 * GIB)

    plan = plan_memory(weights, {"ar": "cuda", "flow": "cuda"}, memory, kv_cache_bytes=2 * GIB, flow_memory_bytes=None)
    (device,) = plan.devices
    assert seen == ["cuda"] and device.headroom == 2 * HEADROOM_PER_ENGINE
    assert [(line.engine, line.component) for line in device.lines] == [
        ("ar", "weights text_encoder"), ("ar", "KV cache"),
        ("flow", "weights transformer"), ("flow", "weights vae"), ("flow", "weights text_encoder"),
        ("flow", "cache"), ("flow", "activations"),
    ]
    # The flow worker holds the VLM in float32 whatever its stored dtype; here both are float32.
    encoder = plan.bytes_of("ar", "weights text_encoder")
    assert encoder == plan.bytes_of("flow", "weights text_encoder") > 0
    assert plan.bytes_of("flow", "cache") == 0
    others = sum(line.bytes for line in device.lines[:-1])
    assert plan.bytes_of("flow", "activations") == (10 * GIB - others - device.headroom) // 2
    assert device.fits
    plan.check()


def test_a_plan_that_does_not_fit_names_every_number(tiny_checkpoint: TinyCheckpoint) -> None:
    weights = load_adapter(tiny_checkpoint("janus-pro")).weight_files()
    plan = plan_memory(weights, {"ar": "cuda:0", "flow": "cuda:0"}, _fake(6.5, 8.0),
                       kv_cache_bytes=4 * GIB, flow_memory_bytes=3 * GIB)
    assert not plan.devices[0].fits
    with pytest.raises(MemoryPlanError) as refused:
        plan.check()
    message = str(refused.value)
    ar_weights = plan.bytes_of("ar", "weights model")
    needed = ar_weights + plan.bytes_of("flow", "weights vq model") + 7 * GIB + 2 * HEADROOM_PER_ENGINE
    for part in ("cuda:0", f"{needed / GIB:.2f} GiB needed", f"ar weights model {ar_weights / GIB:.2f}",
                 "ar KV cache 4.00", "flow activations 3.00", "flow cache 0.00", "headroom 1.00",
                 "0.50 per engine process", "6.50 GiB free of 8.00 GiB", "--kv-cache-gib", "--flow-memory-gib"):
        assert part in message, part
    assert "\n" not in message


def test_nothing_left_for_the_flow_worker_does_not_fit(tiny_checkpoint: TinyCheckpoint) -> None:
    weights = load_adapter(tiny_checkpoint("janus-pro")).weight_files()
    plan = plan_memory(weights, {"ar": "cuda", "flow": "cuda"}, _fake(2.0),
                       kv_cache_bytes=1 * GIB, flow_memory_bytes=None)
    assert plan.bytes_of("flow", "activations") == 0
    with pytest.raises(MemoryPlanError, match="flow activations 0.00"):
        plan.check()


def test_engines_on_different_devices_are_planned_per_device(tiny_checkpoint: TinyCheckpoint) -> None:
    weights = load_adapter(tiny_checkpoint("janus-pro")).weight_files()
    free = {"cuda:0": DeviceMemory(GIB, 2 * GIB), "cuda:1": DeviceMemory(8 * GIB, 8 * GIB)}
    plan = plan_memory(weights, {"ar": "cuda:0", "flow": "cuda:1"}, free.__getitem__,
                       kv_cache_bytes=GIB, flow_memory_bytes=None)
    assert [(d.device, d.headroom, d.fits) for d in plan.devices] == [
        ("cuda:0", HEADROOM_PER_ENGINE, False), ("cuda:1", HEADROOM_PER_ENGINE, True)]
    assert {line.engine for line in plan.devices[1].lines} == {"flow"}
    with pytest.raises(MemoryPlanError, match="cuda:0: .* 1.00 GiB free of 2.00 GiB") as refused:
        plan.check()
    assert "cuda:1" not in str(refused.value)


def _config(model: Path, tmp_path: Path, **settings: object) -> EngineConfig:
    return Settings(cache_dir=tmp_path, **settings).engine_config(model, "tiny")  # type: ignore[arg-type]


def test_apply_plan_on_a_gpu_fixes_the_flow_share_or_refuses(tiny_checkpoint: TinyCheckpoint, tmp_path: Path) -> None:
    model = tiny_checkpoint("janus-pro")
    adapter = load_adapter(model)
    config = apply_plan(_config(model, tmp_path, device="cuda"), adapter, _fake(12.0))
    share = mp.plan_for(_config(model, tmp_path, device="cuda"), adapter, _fake(12.0)).bytes_of("flow", "activations")
    # (12 - 1 KV - 0.5 flow cache - 1 headroom - weights) / 2
    assert config.flow_memory_gib == share / GIB and 4.65 < config.flow_memory_gib < 4.75
    # An explicit share is kept as it is.
    assert apply_plan(_config(model, tmp_path, device="cuda", flow_memory_gib=2.0), adapter,
                      _fake(12.0)).flow_memory_gib == 2.0
    with pytest.raises(MemoryPlanError, match="ar KV cache 16.00"):
        apply_plan(_config(model, tmp_path, device="cuda", kv_cache_gib=16.0), adapter, _fake(12.0))


def test_a_decoder_worker_per_gpu_is_planned_on_its_own_gpu(tiny_checkpoint: TinyCheckpoint,
                                                            tmp_path: Path) -> None:
    model = tiny_checkpoint("janus-pro")
    adapter = load_adapter(model)
    free = {"cuda": 12.0, "cuda:1": 8.0}  # GPU 0 also holds vLLM; GPU 1 has less free

    def memory(device: str) -> DeviceMemory:
        return DeviceMemory(int(free[device] * GIB), int(24 * GIB))

    config = _config(model, tmp_path, device="cuda", flow_devices="cuda:0,cuda:1")
    plan = mp.plan_for(config, adapter, memory)
    lines = {plan_.device: {(line.engine, line.component) for line in plan_.lines} for plan_ in plan.devices}
    assert set(lines) == {"cuda", "cuda:1"}  # cuda:0 is GPU 0, planned once with vLLM
    assert {engine for engine, _ in lines["cuda"]} == {"ar", "flow"}
    assert {engine for engine, _ in lines["cuda:1"]} == {"flow.1"}
    assert ("flow.1", "activations") in lines["cuda:1"] and ("flow.1", "cache") in lines["cuda:1"]
    weights = {line.component: line.bytes for line in plan.devices[1].lines if line.component.startswith("weights")}
    assert weights == {line.component: line.bytes for line in plan.devices[0].lines
                       if line.engine == "flow" and line.component.startswith("weights")}
    # GPU 1: one engine's headroom; every worker gets the smaller of the two devices' shares.
    assert plan.devices[1].headroom == HEADROOM_PER_ENGINE
    shares = [plan.bytes_of(flow, "activations") for flow in ("flow", "flow.1")]
    assert apply_plan(config, adapter, memory).flow_memory_gib == min(shares) / GIB
    free["cuda:1"] = 0.5
    with pytest.raises(MemoryPlanError, match=r"cuda:1: .* needed \(flow\.1 weights"):
        apply_plan(config, adapter, memory)


def test_the_ar_engine_is_planned_on_its_own_gpu(tiny_checkpoint: TinyCheckpoint, tmp_path: Path) -> None:
    model = tiny_checkpoint("janus-pro")
    config = _config(model, tmp_path, device="cuda", ar_device="cuda:1")
    plan = mp.plan_for(config, load_adapter(model), _fake(12.0))
    engines = {plan_.device: {line.engine for line in plan_.lines} for plan_ in plan.devices}
    assert engines == {"cuda:1": {"ar"}, "cuda": {"flow"}}
    assert {plan_.device: plan_.headroom for plan_ in plan.devices} == {"cuda:1": HEADROOM_PER_ENGINE,
                                                                        "cuda": HEADROOM_PER_ENGINE}


def test_each_vllm_rank_is_planned_on_its_gpu_with_its_share(tiny_checkpoint: TinyCheckpoint, tmp_path: Path) -> None:
    model = tiny_checkpoint("janus-pro")
    adapter = load_adapter(model)
    whole = mp.plan_for(_config(model, tmp_path, device="cuda"), adapter, _fake(12.0))
    config = _config(model, tmp_path, device="cuda", tensor_parallel_size=2, flow_devices="cuda:1")
    plan = mp.plan_for(config, adapter, _fake(12.0))
    engines = {plan_.device: {line.engine for line in plan_.lines} for plan_ in plan.devices}
    # Rank 1 and the decoder share GPU 1, planned together.
    assert engines == {"cuda": {"ar"}, "cuda:1": {"ar.1", "flow"}}
    weights = [line.bytes for line in whole.devices[0].lines if line.engine == "ar" and line.component.startswith("weights")]
    for rank in ("ar", "ar.1"):
        ours = [line.bytes for plan_ in plan.devices for line in plan_.lines
                if line.engine == rank and line.component.startswith("weights")]
        assert ours == [-(-size // 2) for size in weights]  # each tensor-parallel rank holds half
        assert plan.bytes_of(rank, "KV cache") == int(config.kv_cache_gib * GIB)  # vLLM's budget is per rank
    assert plan.devices[1].headroom == 2 * HEADROOM_PER_ENGINE


def test_apply_plan_on_cpu_only_logs(tiny_checkpoint: TinyCheckpoint, tmp_path: Path,
                                     caplog: pytest.LogCaptureFixture) -> None:
    model = tiny_checkpoint("janus-pro")
    config = _config(model, tmp_path, kv_cache_gib=16.0)
    with caplog.at_level("INFO", logger=mp.__name__):
        assert apply_plan(config, load_adapter(model), _fake(1.0)) == config
    assert "not enforced on CPU" in caplog.text and "ar KV cache 16.00" in caplog.text


def test_serve_refuses_to_start_on_a_gpu_that_is_too_small(tiny_checkpoint: TinyCheckpoint, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from diptych.engine import devices
    from diptych.server.main import serve

    # A GPU that is there (this host has none) but too small.
    monkeypatch.setattr(devices, "check_device", lambda device, dtype: None)
    monkeypatch.setattr(mp, "device_memory", _fake(1.5, 16.0))
    with pytest.raises(SystemExit) as refused:
        serve({"model": tiny_checkpoint("qwen-image"), "device": "cuda", "cache_dir": tmp_path})
    assert str(refused.value).startswith("diptych serve: not enough device memory")
    assert "1.50 GiB free of 16.00 GiB" in str(refused.value)
    assert not (tmp_path / "staging").exists()  # refused before anything was staged or started


def test_reading_a_gpu_without_one_is_a_plan_error() -> None:
    # This machine has no GPU: the child process's torch.cuda.mem_get_info fails, and says so.
    with pytest.raises(MemoryPlanError, match="cannot read the free memory of cuda"):
        mp.device_memory("cuda")


def test_mid_checkpoint_every_byte_of_weights_is_planned_once(tmp_path_factory: pytest.TempPathFactory) -> None:
    from diptych.models.janus_pro.tiny import write_mid_janus_pro

    model = write_mid_janus_pro(tmp_path_factory.mktemp("mid") / "mid-janus-pro")  # about 330 MB, seconds
    weights = load_adapter(model).weight_files()
    plan = plan_memory(weights, {"ar": "cuda", "flow": "cuda"}, _fake(24.0), kv_cache_bytes=GIB,
                       flow_memory_bytes=None)
    (path,) = weights["ar"][0].files
    with open(path, "rb") as file:
        (length,) = struct.unpack("<Q", file.read(8))
    # Every tensor is float32 and belongs to exactly one engine: the weights are the file's data.
    payload = path.stat().st_size - 8 - length
    assert plan.bytes_of("ar", "weights model") + plan.bytes_of("flow", "weights vq model") == payload
    assert plan.bytes_of("ar", "weights model") > 250 << 20
    plan.check()
    tight = plan_memory(weights, {"ar": "cuda", "flow": "cuda"}, _fake(1.0), kv_cache_bytes=GIB,
                        flow_memory_bytes=None)
    with pytest.raises(MemoryPlanError, match="1.00 GiB free of 24.00 GiB"):
        tight.check()
