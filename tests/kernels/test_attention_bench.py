"""``diptych bench attention``: layout parsing and one tiny run of its JSON report.

(The bench module lives in ``diptych/bench/``; its test sits with the kernels it measures.)
"""

from __future__ import annotations

import argparse
import json

import pytest

from diptych.bench import attention as bench


def test_layouts_parse_with_repetition() -> None:
    spec = bench.parse_layout("T64+3×(I256+T16)")
    assert spec.kv_len == 64 + 3 * 272
    assert spec.image_spans == ((64, 320), (336, 592), (608, 864))
    assert bench.parse_layout("T2048+I1024+T32").image_spans == ((2048, 3072),)
    assert bench.parse_layout("2x(I4)").image_spans == ((0, 4), (4, 8))  # adjacent images
    with pytest.raises(ValueError, match="bad layout part 'X5'"):
        bench.parse_layout("T4+X5")


def test_json_report_of_a_tiny_run(capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    args = parser.parse_args(
        ["--layouts", "T20+I30+T10", "--heads", "4", "--kv-heads", "2", "--head-dim", "16", "--repeats", "1", "--json"]
    )
    assert bench.run(args) == 0
    (row,) = json.loads(capsys.readouterr().out)["layouts"]
    assert row["outputs_match"] and row["backend"] == "sdpa"
    # Visible pairs: 20 text rows (210), 30 image rows × 50 keys, 10 text rows 51..60.
    visible = 210 + 30 * 50 + sum(range(51, 61))
    assert row["visible_fraction"] == pytest.approx(visible / 60**2)
    assert row["share_of_bound"] == pytest.approx(row["ratio"] / row["density_bound"])
    # Our plan computes the text square's triangle exactly, the image rectangle and the
    # masked 10 × 60 block: the cost model counts exactly that.
    assert row["work_fraction"] == pytest.approx((210 + 30 * 50 + 10 * 60) / 60**2)
