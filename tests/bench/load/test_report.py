"""The JSON object, its markdown tables and the PNG plots."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

from diptych.bench.load.client import RequestResult
from diptych.bench.load.driver import LoadPlan, LoadRun
from diptych.bench.load.plots import plot_scenarios
from diptych.bench.load.report import Point, build_report, markdown, write_json
from diptych.bench.load.stats import Slo, summarize


def _point(scenario: str, concurrency: int, latency: float) -> Point:
    results = tuple(
        RequestResult(kind="chat", start_s=0.0, latency_s=latency * (1 + i / 10), status=200, ttft_s=latency / 4,
                      itl_s=(0.01,), output_tokens=8)
        for i in range(concurrency * 2)
    ) + (RequestResult(kind="generate", start_s=0.0, latency_s=0.01, status=429, error="429"),)
    plan = LoadPlan("closed", concurrency, requests=len(results))
    return Point(scenario, plan, summarize(LoadRun(plan, results, wall_s=2.0), Slo(latency_s=latency)))


def _report() -> dict:
    points = [_point("vqa", 1, 0.2), _point("vqa", 4, 0.5), _point("mixed", 2, 0.4)]
    return build_report({"slo": {"ttft_ms": None, "latency_ms": 300.0}, "stream": True}, points)


def test_json_round_trips_and_keeps_every_point(tmp_path: Path) -> None:
    report = _report()
    write_json(report, tmp_path / "r.json")
    loaded = json.loads((tmp_path / "r.json").read_text())
    assert loaded == report
    assert [p["label"] for p in loaded["points"]] == ["c=1", "c=4", "c=2"]
    assert loaded["points"][1]["summary"]["errors"] == {"429": 1}


def test_markdown_has_a_row_per_point_and_per_kind() -> None:
    text = markdown(_report())
    rows = [line for line in text.splitlines() if line.startswith(("| vqa", "| mixed"))]
    assert len(rows) == 3 + 6  # three points, then two kinds each
    first = [cell.strip() for cell in rows[1].split("|")[1:-1]]
    assert first[:5] == ["vqa", "c=4", "9", "8", "429×1"]
    assert first[5] == "4.00" and first[7] == "32.0"  # 8 ok / 2 s; 64 tokens / 2 s
    assert "latency_ms ≤ 300 ms" in text


def test_plots_are_one_small_png_per_scenario(tmp_path: Path) -> None:
    paths = plot_scenarios(_report(), tmp_path)
    assert [p.name for p in paths] == ["latency-vqa.png", "latency-mixed.png"]
    for path in paths:
        assert Image.open(path).format == "PNG" and path.stat().st_size < 100_000
