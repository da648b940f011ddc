"""``diptych bench quality`` (ShapesBench): its judges, and full runs against stub servers.

The stub knows the ground truth, so a right stub must score 100% and a stub with wrong
colours must lose exactly what colours decide: the scoring can fail.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import replace

import httpx
import pytest
import uvicorn

from diptych import cli
from diptych.bench import quality
from diptych.bench.shapes import bench as sb
from diptych.bench.shapes.world import Scene, ShapeObject, render
from tests.bench.shapes_stub import stub_app

N = 21  # three items of each of the seven text-to-image kinds, five questions per kind, five edits per kind


@pytest.mark.parametrize(("reply", "answer", "right"), [
    ("red", "red", True), ("Red.", "red", True), ("red circle", "red", True), ("It's two.", "2", True),
    ("2 circles", "2", True), ("three", "3", True), ("Yes, there is.", "yes", True), ("the top left corner", "top left", True),
    ("Centre", "center", True), ("blue", "red", False), ("no", "yes", False), ("3", "2", False), ("", "red", False),
    ("top right", "top left", False), ("middle left", "center", False), ("top middle right", "top middle", False),
    ("reddish", "red", False),
])
def test_answer_normalisation(reply: str, answer: str, right: bool) -> None:
    assert sb.answer_matches(reply, answer) is right


def test_text_to_image_judge_passes_the_scene_and_fails_a_recoloured_one() -> None:
    item = next(i for i in sb.t2i_items(14, seed=3) if i.kind == "color_attr")
    assert sb.judge_t2i(item, render(item.scene)).correct
    recoloured = Scene(tuple(replace(o, color="purple" if o.color != "purple" else "red") for o in item.scene.objects))
    verdict = sb.judge_t2i(item, render(recoloured))
    assert not verdict.correct and all(kind == "color" and not held for kind, held in verdict.checks)


def test_edit_judge_separates_changed_from_kept() -> None:
    source = Scene((ShapeObject(0, "circle", "red", "small"), ShapeObject(4, "square", "blue", "large")))
    item = sb.EditItem(b"", replace(sb.edit_items(1, seed=0)[0].triplet, source=source, kind="recolor", cells=(0,),
                                    target=Scene((ShapeObject(0, "circle", "green", "small"), source.objects[1]))), 0)
    assert sb.judge_edit(item.triplet, render(item.triplet.target)).correct
    unchanged = sb.judge_edit(item.triplet, render(source))
    assert (unchanged.changed, unchanged.kept) == (False, True)
    collateral = Scene((ShapeObject(0, "circle", "green", "small"), ShapeObject(4, "square", "red", "large")))
    broken = sb.judge_edit(item.triplet, render(collateral))
    assert (broken.changed, broken.kept) == (True, False)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def stub_url() -> Iterator[str]:
    """The right stub behind real HTTP (uvicorn in a thread), as ``--url`` reaches a server.

    Item i of a task does not depend on how many are asked for, so a stub built for N + 4
    knows the answers of every shorter run.
    """
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(stub_app(N + 4), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("stub server did not start")
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


@pytest.mark.timeout(120)
def test_ground_truth_server_scores_100_percent_through_the_cli(stub_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["bench", "quality", "--url", stub_url, "--vqa", str(N + 4), "--t2i", str(N), "--edit", str(N - 1),
                     "--concurrency", "3", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert code == 0 and report["model"] == "stub-shapes"
    for task, n in (("vqa", N + 4), ("t2i", N), ("edit", N - 1)):
        assert (report[task]["n"], report[task]["errors"], report[task]["failures"]) == (n, 0, [])
        assert report[task]["accuracy"] == 1.0, report[task]
        assert all(value["accuracy"] == 1.0 for value in report[task]["by_kind"].values())
    assert set(report["vqa"]["by_kind"]) == {"color", "shape", "count", "position", "exist"}
    assert set(report["t2i"]["by_kind"]) == set(sb.T2I_KINDS)
    assert set(report["t2i"]["by_check"]) == {"object", "color", "count", "position"}
    assert set(report["edit"]["by_kind"]) == {"recolor", "remove", "add", "move"}


def _run_in_process(mode: str, n: int = N) -> dict:
    config = quality.QualityConfig(url="http://stub", vqa=n, t2i=n, edit=n, concurrency=4)
    return asyncio.run(quality.run_bench(config, transport=httpx.ASGITransport(stub_app(n, mode=mode))))


@pytest.mark.timeout(60)
def test_every_image_item_is_requested_with_its_own_seed() -> None:
    """A seed an item, from the run's seed and the item's index: independent noise, same in every run."""
    n, seed = 8, 2
    app = stub_app(n, seed)
    config = quality.QualityConfig(url="http://stub", vqa=0, t2i=n, edit=n, seed=seed, concurrency=4)
    report = asyncio.run(quality.run_bench(config, transport=httpx.ASGITransport(app)))
    assert report["t2i"]["accuracy"] == report["edit"]["accuracy"] == 1.0
    expected = [sb.noise_seed(seed, i) for i in range(n)]
    assert len(set(expected)) == n and expected == [item.noise_seed for item in sb.t2i_items(n, seed)]
    for task in ("t2i", "edit"):
        assert sorted(app.state.seeds[task]) == expected


@pytest.mark.timeout(120)
def test_wrong_colours_lose_what_colours_decide() -> None:
    report = _run_in_process("wrong_colors")
    vqa, t2i = report["vqa"]["by_kind"], report["t2i"]["by_kind"]
    assert vqa["color"]["accuracy"] == 0.0
    assert all(vqa[kind]["accuracy"] == 1.0 for kind in ("shape", "count", "position", "exist"))
    assert t2i["object"]["accuracy"] == t2i["two_objects"]["accuracy"] == 1.0
    assert all(t2i[kind]["accuracy"] == 0.0 for kind in ("color", "color_attr", "position", "layout"))
    assert report["t2i"]["by_check"]["color"]["accuracy"] == 0.0
    assert report["t2i"]["by_check"]["object"]["accuracy"] == 1.0
    assert report["edit"]["accuracy"] == 0.0 and report["edit"]["by_check"]["kept"]["accuracy"] < 0.5
    assert report["vqa"]["errors"] == report["t2i"]["errors"] == report["edit"]["errors"] == 0
    assert len(report["edit"]["failures"]) == quality.MAX_FAILURES_REPORTED
    table = quality.format_table(report)
    assert "text-to-image  OVERALL" in table and "0.0%" in table


@pytest.mark.timeout(60)
def test_failed_image_requests_count_as_wrong_and_as_errors() -> None:
    report = _run_in_process("broken_images", n=4)
    assert (report["t2i"]["accuracy"], report["t2i"]["errors"]) == (0.0, 4)
    assert (report["edit"]["accuracy"], report["edit"]["errors"]) == (0.0, 4)
    assert "HTTP 500" in report["edit"]["failures"][0]["error"]
    assert report["vqa"]["accuracy"] == 1.0
