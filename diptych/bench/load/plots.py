"""PNG plots of a report: per scenario, latency percentiles against throughput over the sweep.

Each sweep point (a concurrency or a rate) is one marker, labelled with its load; lines
join the points in sweep order for p50, p90 and p99 latency, and p50 time to first output
when the run streamed. matplotlib draws off-screen (Agg), small figures at a low DPI so the
files stay tens of kilobytes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def plot_scenarios(report: dict[str, Any], out_dir: Path) -> list[Path]:
    """One ``latency-<scenario>.png`` per scenario in ``report``; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and in CI
    import matplotlib.pyplot as plt

    scenarios = list(dict.fromkeys(p["scenario"] for p in report["points"]))
    paths = []
    for scenario in scenarios:
        points = [p for p in report["points"] if p["scenario"] == scenario and p["summary"]["latency_ms"]]
        fig, ax = plt.subplots(figsize=(5.5, 3.6), dpi=80)
        x = [p["summary"]["requests_per_s"] for p in points]
        for key, style in (("p50", "o-"), ("p90", "s-"), ("p99", "^-")):
            ax.plot(x, [p["summary"]["latency_ms"][key] for p in points], style, label=f"latency {key}")
        first = [(xi, p["summary"]["ttft_ms"]["p50"]) for xi, p in zip(x, points) if p["summary"]["ttft_ms"]]
        if first and report["config"].get("stream", True):
            ax.plot([f[0] for f in first], [f[1] for f in first], "x--", label="first output p50")
        for xi, p in zip(x, points):
            ax.annotate(p["label"], (xi, p["summary"]["latency_ms"]["p50"]), textcoords="offset points",
                        xytext=(4, -10), fontsize=7)
        ax.set_xlabel("throughput (successful requests/s)")
        ax.set_ylabel("latency (ms)")
        ax.set_title(f"{scenario}: latency vs throughput", fontsize=10)
        ax.set_ylim(bottom=0)
        ax.set_xlim(left=0)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        path = out_dir / f"latency-{scenario}.png"
        fig.savefig(path)
        plt.close(fig)
        paths.append(path)
    return paths
