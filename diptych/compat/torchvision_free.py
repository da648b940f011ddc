"""Import hooks that let transformers and vLLM run Qwen2-VL-style models without torchvision.

transformers 5.19 ships PIL twins of its torchvision-backed image processors, but some
callers import the torchvision module by path (vLLM's ``qwen2_vl.py`` takes
``smart_resize`` from ``image_processing_qwen2_vl``), and the video processor slot of a
Qwen2.5-VL processor has no twin at all. Two hooks, both lazy so that installing them
imports nothing:

* an alias: importing a torchvision-backed module yields a module with the PIL twin's
  contents, the torchvision class names bound to the PIL classes;
* post-import hooks for the video slot: once transformers' ``video_processing_auto`` is
  imported, the Qwen2-VL video processor is registered (``AutoVideoProcessor.register``)
  as a placeholder that loads and saves its config but refuses to process video; once
  ``video_processing_utils`` is imported, ``transformers.VideoProcessorMixin`` is exported
  as it is with torchvision (every processor checks its video slot against that name, and
  without torchvision transformers does not export it, so no processor with a video slot
  could be built at all) — on ``transformers`` and on ``processing_utils.transformers_module``,
  the separate module object through which processors look their slot classes up;
* Qwen3-VL's video processor: transformers exports a torchvision dummy under that name,
  although the real class (``video_processing_qwen3_vl``) imports and loads its config
  without torchvision. Once ``transformers.models.qwen3_vl`` is imported, the package, the
  top-level ``transformers`` module and ``AutoVideoProcessor`` name the real class
  (Qwen-Image 2.1's processor and vLLM's ``qwen3_vl.py`` need it; video input itself is
  not served by Diptych and is not tested here).
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import logging
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PilTwin:
    """A torchvision-backed transformers module and the PIL module that replaces it."""

    torchvision_module: str
    pil_module: str
    # Class names the torchvision module defines → their PIL twins' names.
    class_aliases: tuple[tuple[str, str], ...]


PIL_TWINS: tuple[PilTwin, ...] = (
    PilTwin(
        "transformers.models.qwen2_vl.image_processing_qwen2_vl",
        "transformers.models.qwen2_vl.image_processing_pil_qwen2_vl",
        (("Qwen2VLImageProcessor", "Qwen2VLImageProcessorPil"),),
    ),
    PilTwin(
        "transformers.models.gemma3.image_processing_gemma3",
        "transformers.models.gemma3.image_processing_pil_gemma3",
        (("Gemma3ImageProcessor", "Gemma3ImageProcessorPil"),),
    ),
)



class _AliasLoader(importlib.abc.Loader):
    """Executes a fresh module whose namespace is the PIL twin's, plus the class aliases."""

    def __init__(self, twin: PilTwin) -> None:
        self._twin = twin

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return None  # the default module object; exec_module fills it

    def exec_module(self, module: ModuleType) -> None:
        source = importlib.import_module(self._twin.pil_module)
        # Copy public and private names, but not the dunders that identify the module itself.
        module.__dict__.update({k: v for k, v in vars(source).items() if not (k.startswith("__") and k.endswith("__"))})
        for torchvision_name, pil_name in self._twin.class_aliases:
            setattr(module, torchvision_name, getattr(source, pil_name))
        module.__doc__ = f"diptych.compat alias of {self._twin.pil_module} (torchvision is not installed)."
        logger.debug("routed %s to %s", self._twin.torchvision_module, self._twin.pil_module)


class _PostImportLoader(importlib.abc.Loader):
    """Runs the real loader, then a hook on the freshly executed module."""

    def __init__(self, loader: importlib.abc.Loader, hook: Callable[[ModuleType], None]) -> None:
        self._loader = loader
        self._hook = hook

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self._loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self._loader.exec_module(module)
        self._hook(module)

    def __getattr__(self, name: str) -> Any:
        # get_source, get_filename, … so tracebacks and inspect still see the real file.
        return getattr(self._loader, name)


class TorchvisionFreeFinder(importlib.abc.MetaPathFinder):
    """The meta-path finder that serves the two hooks; everything else passes through."""

    def __init__(self) -> None:
        self._twins = {twin.torchvision_module: twin for twin in PIL_TWINS}

    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None,
        target: ModuleType | None = None,
    ) -> importlib.machinery.ModuleSpec | None:
        twin = self._twins.get(fullname)
        if twin is not None:
            return importlib.util.spec_from_loader(fullname, _AliasLoader(twin))
        hook = POST_IMPORT_HOOKS.get(fullname)
        if hook is not None:
            spec = importlib.machinery.PathFinder.find_spec(fullname, path, target)
            if spec is not None and spec.loader is not None:
                spec.loader = _PostImportLoader(spec.loader, hook)
            return spec
        return None


def export_video_processor_mixin(_module: ModuleType | None = None) -> None:
    """Export ``VideoProcessorMixin``, the base class processors check video slots against.

    Processors look it up on ``processing_utils.transformers_module``, a module object of its
    own (``direct_transformers_import``), not ``sys.modules["transformers"]``: set it on both,
    once both ``video_processing_utils`` and (for the second) ``processing_utils`` are loaded,
    whichever is imported first.
    """
    video_processing_utils = sys.modules.get("transformers.video_processing_utils")
    if video_processing_utils is None or not hasattr(video_processing_utils, "VideoProcessorMixin"):
        return  # processing_utils came first: video_processing_utils' own hook will export it
    for target in _top_level_transformers():
        # A plain module attribute: found before the lazy module's __getattr__ is ever consulted.
        setattr(target, "VideoProcessorMixin", video_processing_utils.VideoProcessorMixin)


def _top_level_transformers() -> list[ModuleType]:
    """The module objects that ``from transformers import X`` and processors resolve names on.

    ``processing_utils`` re-executes transformers' ``__init__`` (``direct_transformers_import``),
    which puts a second lazy module in ``sys.modules["transformers"]``; a reference taken
    before that (``import transformers`` early) keeps the first one and is not reached here.
    """
    targets = [sys.modules["transformers"]]
    processing_utils = sys.modules.get("transformers.processing_utils")
    module = getattr(processing_utils, "transformers_module", None)
    if module is not None and module is not targets[0]:
        targets.append(module)
    return targets


def export_qwen3_vl_video_processor(qwen3_vl: ModuleType) -> None:
    """Name the real ``Qwen3VLVideoProcessor`` where transformers exports a torchvision dummy."""
    # The package's __init__ replaces itself in sys.modules by a lazy module: patch that one.
    package = sys.modules[qwen3_vl.__name__]
    real = importlib.import_module(f"{qwen3_vl.__name__}.video_processing_qwen3_vl").Qwen3VLVideoProcessor
    setattr(package, "Qwen3VLVideoProcessor", real)
    for target in _top_level_transformers():
        setattr(target, "Qwen3VLVideoProcessor", real)
    logger.debug("exported the real Qwen3-VL video processor")


def register_video_placeholders(video_processing_auto: ModuleType) -> None:
    """Point the Qwen2-VL / Qwen2.5-VL video slots at the torchvision-free placeholder."""
    from transformers.models.qwen2_5_vl.configuration_qwen2_5_vl import Qwen2_5_VLConfig
    from transformers.models.qwen2_vl.configuration_qwen2_vl import Qwen2VLConfig

    from diptych.compat.video_placeholder import Qwen2VLVideoProcessor

    auto = video_processing_auto.AutoVideoProcessor
    for config_class in (Qwen2VLConfig, Qwen2_5_VLConfig):
        auto.register(config_class, video_processor_classes={"torchvision": Qwen2VLVideoProcessor}, exist_ok=True)
    logger.debug("registered the torchvision-free Qwen2-VL video processor placeholder")
    # Qwen3-VL needs no placeholder: its real class works without torchvision (importing the
    # package runs export_qwen3_vl_video_processor first).
    from transformers.models.qwen3_vl import Qwen3VLVideoProcessor
    from transformers.models.qwen3_vl.configuration_qwen3_vl import Qwen3VLConfig

    auto.register(Qwen3VLConfig, video_processor_classes={"torchvision": Qwen3VLVideoProcessor}, exist_ok=True)


POST_IMPORT_HOOKS: dict[str, Callable[[ModuleType], None]] = {
    "transformers.video_processing_utils": export_video_processor_mixin,
    "transformers.processing_utils": export_video_processor_mixin,
    "transformers.models.qwen3_vl": export_qwen3_vl_video_processor,
    "transformers.models.auto.video_processing_auto": register_video_placeholders,
}


def torchvision_present() -> bool:
    """Whether torchvision is installed (the same test transformers uses: the package can be found)."""
    return importlib.util.find_spec("torchvision") is not None


def install_hooks() -> bool:
    """Install the hooks once per interpreter; True if this call installed them."""
    if any(isinstance(finder, TorchvisionFreeFinder) for finder in sys.meta_path):
        return False
    # First in line: the regular path finder would otherwise find the torchvision module's file.
    sys.meta_path.insert(0, TorchvisionFreeFinder())
    # Modules imported before us never pass through the finder: run their hooks now.
    for name, hook in POST_IMPORT_HOOKS.items():
        already = sys.modules.get(name)
        if already is not None:
            hook(already)
    return True
