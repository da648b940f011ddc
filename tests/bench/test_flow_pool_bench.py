"""``diptych bench flow-pool`` on the tiny checkpoint: both servers take the load, the ratio is theirs."""

from __future__ import annotations

import argparse
import json

import pytest

from diptych.bench import flow_pool


@pytest.mark.slow  # two servers started one after the other (~70 s)
@pytest.mark.timeout(600)
def test_both_setups_serve_every_request_and_the_ratio_is_of_their_rates(capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    flow_pool.add_arguments(parser)
    assert flow_pool.run(parser.parse_args(["--checkpoints", "tiny", "--requests", "4", "--json"])) == 0
    report = json.loads(capsys.readouterr().out)
    (result,) = report["checkpoints"].values()
    rows = result["setups"]
    assert list(rows) == list(flow_pool.SETUPS)
    assert all(row["ok"] == row["requests"] == 4 for row in rows.values())
    pool, one = (row["requests_per_s"] for row in rows.values())
    assert result["ratio"] == pytest.approx(pool / one)
