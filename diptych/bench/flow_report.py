"""``diptych bench flow``'s report: the table it prints, and the machine it ran on."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from typing import Any

import numpy as np

_MIB = 1 << 20


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def cpu_model() -> str:
    """lscpu's "Model name" (what a reader compares machines by), else /proc/cpuinfo's, else "unknown"."""
    try:
        listing = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        listing = ""
    try:
        with open("/proc/cpuinfo") as info:
            listing += info.read()
    except OSError:
        pass
    for line in listing.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() == "model name" and value.strip():
            return value.strip()
    return "unknown"


def format_table(report: dict[str, Any]) -> str:
    config, results = report["config"], report["checkpoints"]
    names = list(results)

    def row(label: str, cell: Callable[[dict[str, Any]], str], key: str | None = None) -> str:
        """One line, or none when no checkpoint has ``key`` (a part this family does not measure)."""
        if key is not None and not any(key in results[n] for n in names):
            return ""
        return f"{label:<46}" + "".join(f"{(cell(results[n]) if key is None or key in results[n] else '-'):>14}"
                                        for n in names) + "\n"

    def mib(key: str) -> Callable[[dict[str, Any]], str]:
        return lambda r: "n/a" if r["peak_rss_bytes"][key] is None else f"{r['peak_rss_bytes'][key] / _MIB:.0f}"

    def overhead(mode: str) -> Callable[[dict[str, Any]], str]:
        return lambda r: f"{100 * r['single'][mode]['overhead']:+.1f}%"

    def seconds(key: str, mode: str | None = None) -> Callable[[dict[str, Any]], str]:
        return lambda r: f"{(r['single'][mode] if mode else r)[key]:.3f}"

    def edits(side: str) -> Callable[[dict[str, Any]], str]:
        def cell(r: dict[str, Any]) -> str:
            times = r["sequential_edits"][f"{side}_s"]
            later = sum(times[1:]) / max(1, len(times) - 1)
            return f"{times[0]:.2f}/{later:.2f}"
        return cell

    def later_over_first(side: str) -> Callable[[dict[str, Any]], str]:
        return lambda r: f"{100 * (r['sequential_edits'][f'{side}_later_over_first'] - 1):+.1f}%"

    machine = report.get("machine", {})
    load_start, load_end = machine.get("load_average_start", [0.0])[0], machine.get("load_average_end", [0.0])[0]
    return "".join([
        f"diptych bench flow ({config.get('family', 'qwen-image')}): {config['requests']} concurrent requests, "
        f"{config['size'] or 'output resolution squared'}, {config['steps']} steps, guidance "
        f"{config['guidance_scale']}; {config['rounds']} rounds, {config['single']} single runs; "
        f"torch threads {config['threads']}\n",
        f"{'checkpoint':<46}" + "".join(f"{n:>14}" for n in names) + "\n",
        row("size", lambda r: r["size"], "size"),
        row("burst: edits (1 ref / 2 refs) of requests", _burst_mix, "burst"),
        row("transformer parameters (M)", lambda r: f"{r['transformer_parameters'] / 1e6:.1f}"),
        row("throughput, server (req/s)", lambda r: f"{r['server_requests_per_s']:.3f}"),
        row("throughput, diffusers one by one (req/s)", lambda r: f"{r['diffusers_requests_per_s']:.3f}"),
        row("throughput ratio (median over rounds)", lambda r: f"{r['throughput_ratio']:.2f}x"),
        row("latency p50 / p95, server (s)",
            lambda r: f"{r['server_latency_p50_s']:.3f}/{r['server_latency_p95_s']:.3f}"),
        row("latency p50 / p95, diffusers one by one (s)",
            lambda r: f"{r['diffusers_latency_p50_s']:.3f}/{r['diffusers_latency_p95_s']:.3f}"),
        row("single request, server (s)", seconds("server_s", "guided")),
        row("single request, diffusers (s)", seconds("diffusers_s", "guided")),
        row("single-request overhead (median of pairs)", overhead("guided")),
        row("single request, no CFG, server (s)", seconds("server_s", "unguided")),
        row("single request, no CFG, diffusers (s)", seconds("diffusers_s", "unguided")),
        row("single-request overhead, no CFG", overhead("unguided")),
        row("sequential edits, server: first/later mean (s)", edits("server"), "sequential_edits"),
        row("sequential edits, server: later vs first", later_over_first("server"), "sequential_edits"),
        row("sequential edits, diffusers: first/later (s)", edits("diffusers"), "sequential_edits"),
        row("sequential edits, diffusers: later vs first", later_over_first("diffusers"), "sequential_edits"),
        row("peak RSS, flow worker (MiB)", mib("flow_worker")),
        row("peak RSS, all server processes (MiB)", mib("server_total")),
        row("peak RSS, diffusers process (MiB)", mib("diffusers")),
        row("max pixel difference, server vs diffusers", lambda r: f"{r['max_pixel_difference']}"),
        row("load average (1 min), start/end", _load, "load_average_start"),
        row("measured for (s)", lambda r: f"{r['measure_s']:.0f}", "measure_s"),
        f"machine: {machine.get('cpu_model', 'unknown')}, {machine.get('cores', '?')} cores; "
        f"load average (1 min) {load_start:.2f} at start, {load_end:.2f} at end\n" if machine else "",
    ])


def _burst_mix(result: dict[str, Any]) -> str:
    references = [job["references"] for job in result["burst"]]
    return f"{references.count(1)}/{references.count(2)} of {len(references)}"


def _load(result: dict[str, Any]) -> str:
    return f"{result['load_average_start'][0]:.1f}/{result['load_average_end'][0]:.1f}"
