"""``diptych bench dtype`` on the tiny checkpoint: both dtypes timed, natively and limited to AVX2."""

from __future__ import annotations

import argparse
import json

import pytest

from diptych.bench import dtype
from tests.conftest import TinyCheckpoint


@pytest.mark.slow  # two child processes per instruction set (~11 s); keeps `make test` in its budget
@pytest.mark.timeout(300)
def test_dtype_bench_times_both_dtypes_on_both_instruction_sets(
    tiny_checkpoint: TinyCheckpoint, capsys: pytest.CaptureFixture[str]
) -> None:
    parser = argparse.ArgumentParser()
    dtype.add_arguments(parser)
    args = parser.parse_args(["--model", str(tiny_checkpoint("qwen-image")), "--steps", "1", "--side", "32", "--json"])
    assert dtype.run(args) == 0
    report = json.loads(capsys.readouterr().out)
    assert set(report["isas"]) == {"native", "avx2"}
    for row in report["isas"].values():
        assert row["float32"] > 0 and row["bfloat16"] > 0
    # The limit really reached torch's kernels in the child.
    assert report["isas"]["avx2"]["torch_cpu_capability"] == "AVX2"
