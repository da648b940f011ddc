"""ShapesBench against a real ``diptych serve`` on the tiny random Qwen-Image-Edit checkpoint.

The tiny model's answers and pictures are noise, so only the plumbing is checked: every
request of every task goes through and is judged, none fails. (Slow: vLLM starts.)
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from diptych.bench import quality
from diptych.bench.server_process import start_server


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_bench_runs_through_a_real_server(tmp_path: Path) -> None:
    from diptych.models.qwen_image.tiny import write_tiny_qwen_image_edit

    checkpoint = write_tiny_qwen_image_edit(tmp_path / "tiny-edit", seed=0)
    server = start_server(checkpoint, tmp_path)
    try:
        config = quality.QualityConfig(url=server.base_url, vqa=2, t2i=2, edit=2, steps=2, concurrency=2)
        report = asyncio.run(quality.run_bench(config))
    finally:
        code = server.stop()
    assert code == 0, server.log()
    for task in ("vqa", "t2i", "edit"):
        assert (report[task]["n"], report[task]["errors"]) == (2, 0), report[task]["failures"]
        assert 0.0 <= report[task]["accuracy"] <= 1.0
