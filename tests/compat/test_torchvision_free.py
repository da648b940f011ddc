"""The torchvision compatibility layer, each case in a fresh interpreter (import hooks are per process)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from diptych.compat.torchvision_free import torchvision_present

pytestmark = pytest.mark.skipif(torchvision_present(), reason="these cases need an environment without torchvision")


def _run(code: str, *, env: dict[str, str] | None = None, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def _ok(code: str, **kwargs: object) -> str:
    result = _run(code, **kwargs)  # type: ignore[arg-type]
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from diptych.models.qwen_image.tiny_vlm import write_tiny_vlm

    root = tmp_path_factory.mktemp("tiny")
    write_tiny_vlm(root, seed=0)
    return root


def test_without_the_layer_the_torchvision_module_fails() -> None:
    # The problem the layer solves; if this starts passing, transformers fixed it upstream.
    result = _run("import transformers.models.qwen2_vl.image_processing_qwen2_vl")
    assert result.returncode != 0
    assert "torchvision" in result.stderr


def test_routes_to_pil_twins_and_is_idempotent() -> None:
    out = _ok(
        """
        import sys
        from diptych import compat
        compat.install(); compat.install()
        from diptych.compat.torchvision_free import TorchvisionFreeFinder
        print(sum(isinstance(f, TorchvisionFreeFinder) for f in sys.meta_path))
        # The import-statement form, as vLLM's qwen2_vl.py uses it.
        from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor, smart_resize
        import transformers.models.qwen2_vl.image_processing_pil_qwen2_vl as pil
        print(smart_resize is pil.smart_resize, Qwen2VLImageProcessor is pil.Qwen2VLImageProcessorPil)
        print(smart_resize(100, 200, factor=28))
        from transformers.models.gemma3.image_processing_gemma3 import Gemma3ImageProcessor
        print(Gemma3ImageProcessor.__name__)
        """
    )
    assert out.split("\n")[:4] == ["1", "True True", "(112, 196)", "Gemma3ImageProcessorPil"]


def test_install_after_transformers_was_imported(tiny_root: Path) -> None:
    # The post-import hooks must also take effect when their modules were already imported.
    out = _ok(
        f"""
        from transformers import AutoProcessor
        import transformers.models.auto.video_processing_auto, transformers.video_processing_utils
        from diptych import compat
        compat.install()
        processor = AutoProcessor.from_pretrained({str(tiny_root / "processor")!r})
        print(type(processor.video_processor).__module__)
        """
    )
    assert out.strip() == "diptych.compat.video_placeholder"


def test_processors_load_with_video_placeholder(tiny_root: Path) -> None:
    out = _ok(
        f"""
        from diptych import compat
        compat.install()
        from PIL import Image
        from transformers import AutoProcessor, Qwen2VLProcessor, Qwen2_5_VLProcessor
        path = {str(tiny_root / "processor")!r}
        for loaded in (AutoProcessor.from_pretrained(path), Qwen2VLProcessor.from_pretrained(path)):
            print(type(loaded).__name__, type(loaded.image_processor).__name__, loaded.video_processor.merge_size)
            batch = loaded(text=["<|vision_start|><|image_pad|><|vision_end|>hi"], images=[Image.new("RGB", (64, 64))])
            print(batch["image_grid_thw"].tolist())
        try:
            loaded.video_processor([[Image.new("RGB", (64, 64))] * 2])
        except NotImplementedError as exc:
            print("video refused:", "torchvision" in str(exc))
        """
    )
    assert out.split("\n")[:5] == [
        "Qwen2_5_VLProcessor Qwen2VLImageProcessorPil 2",
        "[[1, 4, 4]]",
        "Qwen2VLProcessor Qwen2VLImageProcessorPil 2",
        "[[1, 4, 4]]",
        "video refused: True",
    ]


def test_diffusers_edit_pipeline_loads_its_processor(tmp_path: Path) -> None:
    out = _ok(
        f"""
        from diptych import compat
        compat.install()
        from pathlib import Path
        from diffusers import QwenImageEditPipeline
        from diptych.models.qwen_image.tiny import write_tiny_qwen_image_edit
        root = write_tiny_qwen_image_edit(Path({str(tmp_path)!r}) / "edit", seed=0)
        pipe = QwenImageEditPipeline.from_pretrained(root)
        print(type(pipe.processor).__name__, type(pipe.processor.image_processor).__name__)
        """
    )
    assert out.strip() == "Qwen2VLProcessor Qwen2VLImageProcessorPil"


@pytest.mark.slow  # three fresh interpreters import vLLM (~40 s on two cores)
def test_vllm_registry_subprocess_gets_the_layer_through_the_plugin() -> None:
    # vLLM inspects model classes in a fresh interpreter (registry._run_in_subprocess) that
    # loads general plugins first; Diptych's entry point installs the layer there.
    # The second probe excludes Diptych's plugin through vLLM's allow-list: the import fails.
    out = _ok(
        """
        import importlib, os
        from vllm.model_executor.models.registry import _run_in_subprocess
        def probe():
            module = importlib.import_module("vllm.model_executor.models.qwen2_5_vl")
            return module.Qwen2_5_VLForConditionalGeneration.__name__
        print(_run_in_subprocess(probe))
        os.environ["VLLM_PLUGINS"] = "none"  # the child inherits the environment
        try:
            _run_in_subprocess(probe)
        except RuntimeError as exc:
            print("without plugin:", "torchvision" in str(exc))
        """
    )
    assert out.strip().split("\n")[-2:] == ["Qwen2_5_VLForConditionalGeneration", "without plugin: True"]


def test_does_nothing_when_torchvision_is_present(tmp_path: Path) -> None:
    # Simulated presence: an importable (empty) torchvision package.
    (tmp_path / "torchvision").mkdir()
    (tmp_path / "torchvision" / "__init__.py").write_text("")
    out = _ok(
        """
        import sys
        from diptych import compat
        compat.install()
        from diptych.compat.torchvision_free import TorchvisionFreeFinder
        print(any(isinstance(f, TorchvisionFreeFinder) for f in sys.meta_path))
        try:
            import transformers.models.qwen2_vl.image_processing_qwen2_vl
        except ImportError as exc:
            print("real module imported:", exc.name)
        """,
        env={"PYTHONPATH": str(tmp_path)},
    )
    # No hook, and the import reached the real torchvision-backed module (which needs more than our stub).
    assert out.split("\n")[:2] == ["False", "real module imported: torchvision.transforms"]


# ----------------------------------------------------------------- Qwen3-VL (Qwen-Image 2.1's prompt encoder)


@pytest.fixture(scope="module")
def tiny_qwen3_vl_processor(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from diptych.models.qwen_image_21.tiny import _write_processor, qwen3_vl_tokenizer

    root = tmp_path_factory.mktemp("qwen3-vl") / "processor"
    _write_processor(root, qwen3_vl_tokenizer())
    return root


def test_without_the_layer_qwen3_vl_processor_fails(tiny_qwen3_vl_processor: Path) -> None:
    result = _run(
        f"""
        from transformers import Qwen3VLProcessor
        Qwen3VLProcessor.from_pretrained({str(tiny_qwen3_vl_processor)!r})
        """
    )
    assert result.returncode != 0
    assert "Torchvision" in result.stderr


@pytest.mark.parametrize("install_first", [True, False], ids=["install-first", "install-after-import"])
def test_qwen3_vl_processor_builds(tiny_qwen3_vl_processor: Path, install_first: bool) -> None:
    before, after = ("compat.install()", "") if install_first else ("", "compat.install()")
    out = _ok(
        f"""
        from diptych import compat
        {before}
        import transformers, transformers.processing_utils as pu, transformers.video_processing_utils as vpu
        import transformers.models.qwen3_vl as qwen3_vl
        {after}
        from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor as real
        from transformers import Qwen3VLVideoProcessor as top  # a dummy without the layer
        print(top is real, qwen3_vl.Qwen3VLVideoProcessor is real)
        print(pu.transformers_module is not transformers, pu.transformers_module.VideoProcessorMixin is vpu.VideoProcessorMixin)
        from PIL import Image
        from transformers import AutoProcessor, Qwen3VLProcessor
        path = {str(tiny_qwen3_vl_processor)!r}
        for loaded in (AutoProcessor.from_pretrained(path), Qwen3VLProcessor.from_pretrained(path)):
            batch = loaded(text=["<|vision_start|><|image_pad|><|vision_end|>hi"], images=[Image.new("RGB", (64, 64))])
            print(type(loaded).__name__, type(loaded.video_processor).__name__, batch["image_grid_thw"].tolist())
        """
    )
    assert out.split("\n")[:4] == [
        "True True",
        "True True",
        "Qwen3VLProcessor Qwen3VLVideoProcessor [[1, 4, 4]]",
        "Qwen3VLProcessor Qwen3VLVideoProcessor [[1, 4, 4]]",
    ]


def test_vllm_imports_its_qwen3_vl_model_module() -> None:
    # vLLM's qwen3_vl.py imports transformers' torchvision image processor and the Qwen3-VL
    # video processor by name; with the layer both resolve (no engine start).
    out = _ok(
        """
        from diptych import compat
        compat.install()
        import vllm.model_executor.models.qwen3_vl as q
        print(q.Qwen3VLForConditionalGeneration.__name__, q.Qwen2VLImageProcessor.__name__, q.Qwen3VLVideoProcessor.__module__)
        """
    )
    assert out.strip().split("\n")[-1] == (
        "Qwen3VLForConditionalGeneration Qwen2VLImageProcessorPil transformers.models.qwen3_vl.video_processing_qwen3_vl"
    )


@pytest.mark.slow  # a fresh vLLM interpreter (~20 s on two cores)
def test_vllm_registry_subprocess_imports_qwen3_vl() -> None:
    # The same route as Qwen2.5-VL above: vLLM's helper interpreter gets the layer from the plugin.
    out = _ok(
        """
        import importlib
        from vllm.model_executor.models.registry import _run_in_subprocess
        def probe():
            module = importlib.import_module("vllm.model_executor.models.qwen3_vl")
            return module.Qwen3VLVideoProcessor.__module__
        print(_run_in_subprocess(probe))
        """
    )
    assert out.strip().split("\n")[-1] == "transformers.models.qwen3_vl.video_processing_qwen3_vl"
