"""``diptych bench attention``: the CPU mixed-mask path against dense-mask SDPA.

For each prefill layout (``T`` text run, ``I`` image block, ``k×(...)`` repetition, e.g.
``T64+3×(I256+T16)``) both paths run in the same process on the same inputs, their
timings interleaved: ``dense`` is ``scaled_dot_product_attention(q, k, v, attn_mask,
enable_gqa=True)`` with an additive L×L mask built once and reused; ``ours`` is
``diptych.kernels.attention`` (default backend) with its layout built once. Reported per
layout:

* ratio: dense time ÷ our time (best of ``--repeats`` each; both use the same SDPA CPU
  kernel with the same grouped-head handling, so only the masking strategy differs);
* bound: 1 ÷ fraction of visible query–key pairs, the ratio of an ideal kernel whose cost
  is proportional to visible pairs; share = ratio ÷ bound;
* work, model×: the cost model of our plan — query–key products it computes ÷ L², and
  the ratio predicted if time were proportional to them;
* tiles: 64 × 64 tiles a block-sparse kernel computes (full + partial) ÷ all tiles;
* peak extra memory of each path (metadata or mask build plus one call), from the
  process's peak resident set, reset before each measurement (Linux only).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import functools
import gc
import json
import logging
import math
import os
import re
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from diptych.kernels import SKIPPED, MaskLayout, SequenceSpec, attention, classify_tiles, select_backend
from diptych.kernels.sdpa_segments import segment_work

logger = logging.getLogger(__name__)

DEFAULT_LAYOUTS = ("T64+I576+T32", "T64+I1024+T32", "T2048+I1024+T32", "T64+3×(I256+T16)")
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_REPEAT = re.compile(r"(\d+)\s*[x×]\s*\(([^()]*)\)")
_PART = re.compile(r"([TI])(\d+)")


def parse_layout(text: str) -> SequenceSpec:
    """``"T64+3×(I256+T16)"`` → a fully queried sequence with its image spans."""
    expanded = text.replace(" ", "")
    while (match := _REPEAT.search(expanded)) is not None:
        expanded = expanded[: match.start()] + "+".join([match.group(2)] * int(match.group(1))) + expanded[match.end() :]
    spans, pos = [], 0
    for part in expanded.split("+"):
        parsed = _PART.fullmatch(part)
        if parsed is None or int(parsed.group(2)) == 0:
            raise ValueError(f"bad layout part {part!r} in {text!r}: expected T<n> or I<n>, n > 0")
        length = int(parsed.group(2))
        if parsed.group(1) == "I":
            spans.append((pos, pos + length))
        pos += length
    return SequenceSpec(kv_len=pos, image_spans=tuple(spans))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--layouts", nargs="+", default=list(DEFAULT_LAYOUTS), help="prefill layouts to measure")
    # Defaults: the attention shape of BAGEL-7B's language model (Qwen2-7B).
    parser.add_argument("--heads", type=int, default=28, help="query heads")
    parser.add_argument("--kv-heads", type=int, default=4, help="key/value heads")
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--dtype", choices=sorted(_DTYPES), default="float32")
    parser.add_argument("--repeats", type=int, default=15, help="timed calls per path (best is reported)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--flex", action="store_true", help="also time compiled FlexAttention (compiles per layout)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")


def run(args: argparse.Namespace) -> int:
    if args.heads % args.kv_heads:
        raise ValueError(f"--heads ({args.heads}) must be a multiple of --kv-heads ({args.kv_heads})")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    specs = [parse_layout(text) for text in args.layouts]
    rows = [_measure(spec, text, args) for spec, text in zip(specs, args.layouts, strict=True)]
    # Memory after all timings: measuring it changes how malloc pools memory (see
    # _unpooled_malloc), which would change the timings of whatever ran after it.
    with _unpooled_malloc():
        for spec, row in zip(specs, rows, strict=True):
            row.update(_memory(spec, args))
    report = {
        "config": {
            "heads": args.heads,
            "kv_heads": args.kv_heads,
            "head_dim": args.head_dim,
            "dtype": args.dtype,
            "repeats": args.repeats,
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
        },
        # Other processes compete for the same cores; the load average says how much.
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "layouts": rows,
    }
    sys.stdout.write(json.dumps(report, indent=2) + "\n" if args.json else _table(report))
    mismatched = [row["layout"] for row in rows if not row["outputs_match"]]
    if mismatched:
        logger.error("outputs differ from dense-mask SDPA on %s", ", ".join(mismatched))
        return 1
    return 0


def _measure(spec: SequenceSpec, text: str, args: argparse.Namespace) -> dict[str, Any]:
    ours_setup, dense_setup = _paths(spec, args)
    ours, dense = ours_setup(), dense_setup()
    difference = float((ours().double() - dense().double()).abs().max())
    ours_s, dense_s = _interleaved_times([ours, dense], args.repeats)
    del ours, dense
    gc.collect()

    layout = MaskLayout.build([spec])
    length = spec.kv_len
    density = layout.visible_pairs() / length**2
    work = sum(segment_work(seg) for seg in layout.segments) / length**2
    tiles = classify_tiles(layout.kv_start, layout.kv_end, length, 64, 64)
    ratio = min(dense_s) / min(ours_s)
    dtype = _DTYPES[args.dtype]
    row: dict[str, Any] = {
        "layout": text,
        "tokens": length,
        "backend": select_backend(torch.empty(0, 1, args.head_dim, dtype=dtype)).name,
        "dense_ms": min(dense_s) * 1e3,
        "ours_ms": min(ours_s) * 1e3,
        "dense_ms_median": statistics.median(dense_s) * 1e3,
        "ours_ms_median": statistics.median(ours_s) * 1e3,
        "ratio": ratio,
        "visible_fraction": density,
        "density_bound": 1 / density,
        "share_of_bound": ratio * density,
        "work_fraction": work,
        "model_ratio": 1 / work,
        "tiles_computed_fraction": 1 - tiles.fraction(SKIPPED),
        "max_abs_difference": difference,
        "outputs_match": difference <= (1e-4 if dtype == torch.float32 else 3e-2),
    }
    if args.flex:
        row.update(_flex_times(spec, args, min(dense_s)))
    logger.info("%s: ratio %.2f (bound %.2f)", text, ratio, 1 / density)
    return row


def _memory(spec: SequenceSpec, args: argparse.Namespace) -> dict[str, float]:
    ours_setup, dense_setup = _paths(spec, args)
    return {"ours_peak_extra_mib": _peak_extra_mib(ours_setup), "dense_peak_extra_mib": _peak_extra_mib(dense_setup)}


def _paths(
    spec: SequenceSpec, args: argparse.Namespace
) -> tuple[Callable[[], Callable[[], torch.Tensor]], Callable[[], Callable[[], torch.Tensor]]]:
    """Set-ups of our path and of the dense baseline on the same seeded inputs; each builds
    its per-batch metadata (layout, or the L×L mask) and returns the call to repeat."""
    q, k, v = _inputs(spec.kv_len, args)

    def ours_setup() -> Callable[[], torch.Tensor]:
        layout = MaskLayout.build([spec])
        return lambda: attention(q, k, v, layout)

    def dense_setup() -> Callable[[], torch.Tensor]:
        mask = _dense_mask(MaskLayout.build([spec]), q.dtype)
        # [1, H, L, D]: SDPA's fused CPU kernel takes 4-d inputs (3-d ones fall back to math).
        heads_first = [x.transpose(0, 1).unsqueeze(0) for x in (q, k, v)]
        return lambda: F.scaled_dot_product_attention(*heads_first, attn_mask=mask, enable_gqa=True)[0].transpose(0, 1)

    return ours_setup, dense_setup


def _inputs(length: int, args: argparse.Namespace) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    dtype = _DTYPES[args.dtype]
    gen = torch.Generator().manual_seed(args.seed)
    q = torch.randn(length, args.heads, args.head_dim, generator=gen).to(dtype)
    k = torch.randn(length, args.kv_heads, args.head_dim, generator=gen).to(dtype)
    v = torch.randn(length, args.kv_heads, args.head_dim, generator=gen).to(dtype)
    return q, k, v


def _dense_mask(layout: MaskLayout, dtype: torch.dtype) -> torch.Tensor:
    """The additive L×L mask of the baseline (0 visible, -inf masked), from the intervals."""
    keys = torch.arange(layout.total_k)
    visible = (keys[None] >= layout.kv_start[:, None]) & (keys[None] < layout.kv_end[:, None])
    return torch.zeros(visible.shape, dtype=dtype).masked_fill_(~visible, float("-inf"))


def _interleaved_times(calls: list[Callable[[], torch.Tensor]], repeats: int) -> list[list[float]]:
    """Seconds per call, alternating the paths (in reversed order every other round, so
    neither always runs first) so that load from other processes hits both alike; one
    untimed warm-up call each first."""
    times: list[list[float]] = [[] for _ in calls]
    for call in calls:
        call()
    for round_ in range(repeats):
        order = range(len(calls)) if round_ % 2 == 0 else reversed(range(len(calls)))
        for index in order:
            start = time.perf_counter()
            calls[index]()
            times[index].append(time.perf_counter() - start)
    return times


def _flex_times(spec: SequenceSpec, args: argparse.Namespace, dense_s: float) -> dict[str, float]:
    q, k, v = _inputs(spec.kv_len, args)
    layout = MaskLayout.build([spec])
    start = time.perf_counter()
    attention(q, k, v, layout, backend="flex")  # compiles
    compile_s = time.perf_counter() - start
    (flex_s,) = _interleaved_times([lambda: attention(q, k, v, layout, backend="flex")], args.repeats)
    return {"flex_ms": min(flex_s) * 1e3, "flex_ratio": dense_s / min(flex_s), "flex_compile_s": compile_s}


# glibc's mallopt parameters; setting one also stops glibc from adjusting both itself.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


@contextlib.contextmanager
def _unpooled_malloc() -> Iterator[None]:
    """Serve every block of 128 KiB or more by mmap while measuring, so that freeing it
    returns it to the OS: otherwise glibc keeps freed blocks (it raises its threshold after
    each large free) and a later allocation reuses resident pages without raising the
    peak, and the measurement would depend on what ran before. Afterwards both thresholds
    are set to where glibc's own adjustment settles (32 MiB, trimming above 64 MiB); the
    timings run before this anyway, as returning memory to the OS on every free slows
    down whatever allocates large outputs per call."""
    libc = _libc()
    if libc is None:
        yield
        return
    libc.mallopt(_M_MMAP_THRESHOLD, 128 << 10)
    try:
        yield
    finally:
        libc.mallopt(_M_MMAP_THRESHOLD, 32 << 20)
        libc.mallopt(_M_TRIM_THRESHOLD, 64 << 20)


@functools.cache
def _libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _peak_extra_mib(setup: Callable[[], Callable[[], torch.Tensor]]) -> float:
    """Peak resident memory added by ``setup()`` and one call of what it returns."""
    gc.collect()
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)  # free pages kept from earlier work would be reused unseen
    try:
        _CLEAR_REFS.write_text("5")  # resets the peak (VmHWM) to the current RSS
    except OSError:
        return math.nan
    before = _status_kib("VmRSS")
    call = setup()
    call()
    peak = _status_kib("VmHWM")
    del call
    gc.collect()
    return (peak - before) / 1024


def _status_kib(field: str) -> int:
    for line in _STATUS.read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise LookupError(field)


def _table(report: dict[str, Any]) -> str:
    config = report["config"]
    lines = [
        f"attention prefill, {config['heads']}/{config['kv_heads']} heads × {config['head_dim']}, "
        f"{config['dtype']}, {config['threads']} threads, best of {config['repeats']}; "
        f"load average {report['load_average_before'][0]:.2f} → {report['load_average_after'][0]:.2f}",
        "",
    ]
    header = ["layout", "L", "dense ms", "ours ms", "ratio", "bound", "share", "work", "model×", "tiles",
              "dense MiB", "ours MiB"]
    flex = any("flex_ms" in row for row in report["layouts"])
    if flex:
        header += ["flex ms", "flex ratio"]
    table = [header]
    for row in report["layouts"]:
        cells = [
            row["layout"], str(row["tokens"]), f"{row['dense_ms']:.1f}", f"{row['ours_ms']:.1f}",
            f"{row['ratio']:.2f}×", f"{row['density_bound']:.2f}×", f"{row['share_of_bound']:.0%}",
            f"{row['work_fraction']:.3f}", f"{row['model_ratio']:.2f}×", f"{row['tiles_computed_fraction']:.3f}",
            f"{row['dense_peak_extra_mib']:.1f}", f"{row['ours_peak_extra_mib']:.1f}",
        ]
        if flex:
            cells += [f"{row['flex_ms']:.1f}", f"{row['flex_ratio']:.2f}×"]
        table.append(cells)
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    for r in table:
        lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))))
    return "\n".join(lines) + "\n"
