"""The Triton kernel against the float64 reference, run in Triton's CPU interpreter.

The interpreter must be on when Triton is imported (Triton wraps its own library then),
and switching it on for the whole pytest session would change how other tests see Triton.
So unless this process already runs with it, the module runs once more in a child
pytest process with ``TRITON_INTERPRET=1``, and each test here asserts its outcome there.
The interpreter is slow: cases are smaller (at most 2 sequences of 3 parts) and fewer
than for the CPU path.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from xml.etree import ElementTree

import pytest
import torch
from attention_cases import Case, assert_matches_reference, cases
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("triton")

from diptych.kernels import MaskLayout, SequenceSpec, attention  # noqa: E402
from diptych.kernels.triton_attention import interpreter_active  # noqa: E402
from tests.conftest import TinyCheckpoint  # noqa: E402

_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def child_outcomes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str] | None:
    """None if this process runs Triton's interpreter; otherwise run this whole module once
    in a child pytest with it on and return each test's outcome there, with its report."""
    if interpreter_active():
        return None
    if os.environ.get("TRITON_INTERPRET") == "1":
        pytest.fail("TRITON_INTERPRET=1 is set but Triton was imported before it was")
    report = tmp_path_factory.mktemp("triton-child") / "report.xml"
    child = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={report}", __file__],
        cwd=_ROOT,
        env={**os.environ, "TRITON_INTERPRET": "1"},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if not report.exists():
        pytest.fail(f"the interpreter child wrote no report:\n{child.stdout[-4000:]}\n{child.stderr[-4000:]}")
    outcomes = {}
    for case in ElementTree.parse(report).iter("testcase"):
        problem = next((case.find(tag) for tag in ("failure", "error", "skipped") if case.find(tag) is not None), None)
        if problem is None:
            outcomes[case.get("name")] = "passed"
        else:
            outcomes[case.get("name")] = f"{problem.tag}: {problem.get('message', '')}\n{problem.text or ''}"
    return outcomes


def _runs_here(outcomes: dict[str, str] | None, name: str) -> bool:
    """Whether to run the test body in this process; else check the child's outcome."""
    if outcomes is None:
        return True
    if outcomes.get(name, "").startswith("skipped"):
        pytest.skip(f"in the interpreter child: {outcomes[name]}")
    assert outcomes.get(name) == "passed", f"in the interpreter child: {outcomes.get(name, 'not run')}"
    return False


@settings(max_examples=16, deadline=None)
@given(cases(max_sequences=2, max_parts=3), st.sampled_from((torch.float32, torch.float16)))
def _random_layouts_match(case: Case, dtype: torch.dtype) -> None:
    assert_matches_reference(case, dtype, "triton")


def test_triton_kernel_matches_reference_in_interpreter(child_outcomes: dict[str, str] | None) -> None:
    if _runs_here(child_outcomes, "test_triton_kernel_matches_reference_in_interpreter"):
        _random_layouts_match()


def test_triton_kernel_on_tile_edges(child_outcomes: dict[str, str] | None) -> None:
    # Deterministic companions of the random cases: an image ending exactly on a tile edge,
    # one straddling it, adjacent images, a decode row and padding, grouped heads, fp16.
    if not _runs_here(child_outcomes, "test_triton_kernel_on_tile_edges"):
        return
    layout = MaskLayout.build(
        [
            SequenceSpec(kv_len=192, image_spans=((64, 128),)),
            SequenceSpec(kv_len=200, q_len=130, image_spans=((63, 127), (127, 129), (129, 194))),
            SequenceSpec(kv_len=65, q_len=1),
        ],
        num_q_rows=192 + 130 + 1 + 7,
    )
    for dtype in (torch.float32, torch.float16):
        assert_matches_reference(Case(layout, heads=4, kv_heads=2, head_dim=32, extra_keys=5), dtype, "triton")


def test_triton_refuses_bfloat16_in_interpreter(child_outcomes: dict[str, str] | None) -> None:
    if not _runs_here(child_outcomes, "test_triton_refuses_bfloat16_in_interpreter"):
        return
    layout = MaskLayout.build([SequenceSpec(kv_len=4)])
    q = torch.zeros(4, 1, 16, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="bfloat16"):
        attention(q, q, q, layout, backend="triton")


def test_triton_kernel_on_qwen_image_21_packs(
    child_outcomes: dict[str, str] | None, tiny_checkpoint: TinyCheckpoint
) -> None:
    # The layouts a served family makes: Qwen-Image 2.1's packed steps (text and references
    # prefilled block-causally, targets over stored prefixes, both in one pack), run through
    # the runner with the Triton kernel and with the float64 reference.
    if not _runs_here(child_outcomes, "test_triton_kernel_on_qwen_image_21_packs"):
        return
    from PIL import Image

    from diptych.models.qwen_image_21.flow import QwenImage21FlowRunner
    from diptych.models.qwen_image_21.tiny import OUTPUT_RESOLUTION
    from diptych.types import ImageRequest

    runner = QwenImage21FlowRunner(tiny_checkpoint("qwen-image-2.1"), output_resolution=OUTPUT_RESOLUTION)
    wide, square = Image.new("RGB", (96, 64), (20, 200, 40)), Image.new("RGB", (64, 64), (200, 20, 40))
    first = [
        ImageRequest("t2i", "a red square", 64, 96, seed=1, num_inference_steps=3),
        ImageRequest("edit", "make it blue", 64, 64, seed=2, num_inference_steps=3, source_images=(wide,)),
    ]
    late = ImageRequest("two", "side by side", 96, 64, seed=3, num_inference_steps=2, source_images=(wide, square))
    latents = {}
    for backend in ("triton", "reference"):
        runner.attention_backend = backend
        states = [s for group in runner.prepare(first) for s in group]
        runner.step(states)  # every prefix filled
        states += runner.prepare([late])[0]
        runner.step(states)  # targets over stored prefixes, and a newcomer's prefill, in one pack
        latents[backend] = [s.latents for s in states]
    # The tiny model's latents reach about 25 after a step; float32 paths (SDPA's included)
    # agree with the float64 reference to about 1e-5 of that.
    for ours, reference in zip(latents["triton"], latents["reference"], strict=True):
        torch.testing.assert_close(ours, reference, atol=1e-4 * float(reference.abs().max()), rtol=0)
