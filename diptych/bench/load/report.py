"""The report of a load test: one JSON object, and the same figures as markdown tables.

The JSON object holds the run's configuration and, per sweep point (scenario × concurrency
or rate), its ``Summary``; times in milliseconds, rates per second. The markdown has one
row per point, then one row per kind of request of each point (chat, generate, edit), where
the first-output column means the first token for chat and the first partial image for
images.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from diptych.bench.load.driver import LoadPlan
from diptych.bench.load.stats import Summary


@dataclass(frozen=True)
class Point:
    scenario: str
    plan: LoadPlan
    summary: Summary


def build_report(config: dict[str, Any], points: list[Point]) -> dict[str, Any]:
    return {
        "config": config,
        "points": [
            {"scenario": p.scenario, "mode": p.plan.mode, "level": p.plan.level, "label": p.plan.label,
             "summary": dataclasses.asdict(p.summary)}
            for p in points
        ],
    }


def write_json(report: dict[str, Any], path: Path) -> None:
    path.write_text(json.dumps(report, indent=2) + "\n")


def _ms(dist: dict[str, Any] | None, *keys: str) -> str:
    return " / ".join(f"{dist[k]:.0f}" for k in keys) if dist else "–"


def _rate(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def _errors(errors: dict[str, int]) -> str:
    return ", ".join(f"{key}×{count}" for key, count in errors.items()) or "0"


def markdown(report: dict[str, Any]) -> str:
    slo = report["config"].get("slo") or {}
    objective = ", ".join(f"{k} ≤ {v:g} ms" for k, v in slo.items() if v is not None) or "none given"
    lines = [
        ("| scenario | load | sent | ok | errors | req/s | images/s | output tok/s "
         "| latency p50 / p90 / p99 (ms) | first output p50 / p99 (ms) | ITL p50 / p99 (ms) | goodput (req/s) |"),
        "|---|---|--:|--:|---|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for point in report["points"]:
        s = point["summary"]
        lines.append(
            f"| {point['scenario']} | {point['label']} | {s['requests']} | {s['ok']} | {_errors(s['errors'])} "
            f"| {s['requests_per_s']:.2f} | {s['images_per_s']:.2f} | {s['output_tokens_per_s']:.1f} "
            f"| {_ms(s['latency_ms'], 'p50', 'p90', 'p99')} | {_ms(s['ttft_ms'], 'p50', 'p99')} "
            f"| {_ms(s['itl_ms'], 'p50', 'p99')} | {_rate(s['goodput_per_s'])} |"
        )
    lines += [
        "",
        (f"Goodput objective: {objective}. First output: first token (chat), first partial image "
         "(generate, edit; the image itself when none is streamed)."),
        "",
        ("| scenario | load | kind | sent | ok | latency p50 / p90 / p99 (ms) | first output p50 / p99 (ms) "
         "| ITL p50 / p99 (ms) |"),
        "|---|---|---|--:|--:|--:|--:|--:|",
    ]
    for point in report["points"]:
        for kind, k in point["summary"]["kinds"].items():
            lines.append(
                f"| {point['scenario']} | {point['label']} | {kind} | {k['requests']} | {k['ok']} "
                f"| {_ms(k['latency_ms'], 'p50', 'p90', 'p99')} | {_ms(k['ttft_ms'], 'p50', 'p99')} "
                f"| {_ms(k['itl_ms'], 'p50', 'p99')} |"
            )
    return "\n".join(lines) + "\n"
