"""The CPU path allocates nothing of L×L size, at L = 8192.

Two probes: every tensor any aten op returns (a dispatch mode, which sees the SDPA kernel's
outputs and any mask we build), and the process's peak resident memory (which also sees
allocations inside kernels), reset just before the call.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from diptych.kernels import MaskLayout, SequenceSpec, attention

L = 8192
# Text, an image, a long text run after it (masked chunks), and a second packed sequence
# queried over a cached prefix, with an image straddling the prefix boundary.
SPECS = [
    SequenceSpec(kv_len=6144, image_spans=((2048, 4096),)),
    SequenceSpec(kv_len=2048, q_len=1536, image_spans=((256, 1024),)),
]
_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


class _LargestOutput(TorchDispatchMode):
    """Records the element count of the largest tensor any aten op returns."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0
        self.op = ""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204 - torch protocol
        out = func(*args, **(kwargs or {}))
        for tensor in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(tensor, torch.Tensor) and tensor.numel() > self.largest:
                self.largest, self.op = tensor.numel(), str(func)
        return out


def _inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, MaskLayout]:
    layout = MaskLayout.build(SPECS)
    assert layout.total_k == L
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(layout.num_q_rows, 2, 16, generator=gen)
    k = torch.randn(L, 1, 16, generator=gen)
    v = torch.randn(L, 1, 16, generator=gen)
    return q, k, v, layout


def test_no_op_returns_an_l_by_l_tensor() -> None:
    q, k, v, layout = _inputs()
    with _LargestOutput() as probe:
        attention(q, k, v, layout, backend="sdpa")
    # The largest tensor is the output or the 256-row mask buffer (256 × L), far from L × L.
    assert probe.largest <= 256 * L, f"{probe.op} returned {probe.largest} elements"

    # The probe does see L×L tensors: the dense-mask baseline trips it.
    with _LargestOutput() as control:
        mask = torch.ones(q.shape[0], L, dtype=torch.bool)
        F.scaled_dot_product_attention(
            q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1), attn_mask=mask, enable_gqa=True
        )
    assert control.largest >= q.shape[0] * L


def _resident_kib(field: str) -> int:
    for line in _STATUS.read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise LookupError(field)


@pytest.mark.skipif(not _CLEAR_REFS.exists(), reason="needs Linux /proc/self/clear_refs to reset peak RSS")
def test_peak_memory_stays_far_below_an_l_by_l_mask() -> None:
    q, k, v, layout = _inputs()
    attention(q, k, v, layout, backend="sdpa")  # warm up: thread pools, first-call buffers
    try:
        _CLEAR_REFS.write_text("5")  # resets VmHWM (peak RSS) to the current RSS
    except OSError as exc:
        pytest.skip(f"cannot reset peak RSS: {exc}")
    before = _resident_kib("VmRSS")
    out = attention(q, k, v, layout, backend="sdpa")
    extra_mib = (_resident_kib("VmHWM") - before) / 1024
    # A boolean L×L mask alone is 64 MiB, a float32 one 256 MiB; our largest buffer, one
    # 256-row mask chunk, is 8 MiB.
    assert extra_mib < 16, f"peak grew by {extra_mib:.1f} MiB"
    assert out.shape == q.shape
