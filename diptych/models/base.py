"""What every model family adapter provides, and the capability data it declares."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol, TypeVar

from diptych.types import CacheStats, ChatMessage, ImageRequest


@dataclass(frozen=True)
class Capabilities:
    understand: bool
    generate: bool
    edit: bool
    # Image sizes: each side in [min_side, max_side] and a multiple of size_multiple.
    min_side: int = 16
    max_side: int = 1024
    size_multiple: int = 16
    default_size: tuple[int, int] = (256, 256)
    max_source_images: int = 1
    supports_mask: bool = False
    # References keep their alpha channel (the family's VAE encodes RGBA); otherwise they are
    # composited onto white.
    reference_alpha: bool = False
    # A checkpoint's working side: references are resized to about its square, and an edit that
    # names no size is drawn at that area with its last reference's aspect. None: not used.
    output_resolution: int | None = None
    default_steps: int = 20
    default_guidance_scale: float = 4.0
    # vLLM's tool parser for the calls the chat template teaches (e.g. "hermes"); None: the
    # template renders no tools, and a request with tools is refused.
    tool_parser: str | None = None

    def names(self) -> tuple[str, ...]:
        return tuple(n for n in ("understand", "generate", "edit") if getattr(self, n))


def area_size(width: int, height: int, side: int, multiple: int) -> tuple[int, int]:
    """(width, height) of about ``side``² pixels in the aspect of ``width``:``height``, each rounded to ``multiple``."""
    ratio = width / height
    new_width = math.sqrt(side * side * ratio)
    return round(new_width / multiple) * multiple, round(new_width / ratio / multiple) * multiple


@dataclass(frozen=True)
class ModelCard:
    """What `/v1/models` says of the loaded model."""

    name: str
    family: str
    architecture: str
    capabilities: Capabilities
    max_model_len: int
    dtype: str = "float32"


@dataclass(frozen=True)
class ChatPrompt:
    """A rendered chat prompt for the AR engine: text with the family's image placeholders."""

    text: str
    images: tuple[Any, ...]  # PIL images in placeholder order


class FlowState(Protocol):
    """Per-image state of a denoising job; owned by the worker's scheduler, not the runner."""

    step_index: int
    num_steps: int
    prompt_tokens: int


S = TypeVar("S", bound=FlowState)


@dataclass(frozen=True)
class FlowCost:
    """What an active request takes from the flow worker's running batch, for admission by budget.

    ``tokens``: sequence tokens one denoising step puts through the denoiser for the request
    (all its images and guidance branches). ``memory_bytes``: an estimate of the working
    memory it holds while active (its state and its share of a step's activations).
    """

    tokens: int
    memory_bytes: int

    def __add__(self, other: FlowCost) -> FlowCost:
        return FlowCost(self.tokens + other.tokens, self.memory_bytes + other.memory_bytes)


class FlowRunner(Protocol[S]):
    """The denoising stages of a family, run inside the flow worker process.

    A runner keeps no per-request state on ``self``: everything a request needs lives in
    the state objects that :meth:`prepare` returns, so one runner serves overlapping
    requests, and every method takes the states of many requests at once so that it can
    batch them. A request's results must not depend on what it is batched with (its noise
    comes from its own seeded generator).
    """

    def check(self, request: ImageRequest) -> FlowCost:
        """Refuse a request that can never run (``ValueError``); otherwise price it. Cheap: no model call."""
        ...

    def prepare(self, requests: Sequence[ImageRequest]) -> list[list[S]]:
        """Encode the prompts of all ``requests`` together and draw initial latents.

        Returns one list of states (one per image) per request, in order.
        """
        ...

    def step(self, states: list[S]) -> None:
        """Advance every state by one denoising step.

        All or nothing: if it raises, no state has changed (the scheduler then retries
        request by request to find the one at fault).
        """
        ...

    def preview(self, states: list[S]) -> list[Any]:
        """PIL previews decoded from each state's predicted clean latent, in order."""
        ...

    def decode(self, states: list[S]) -> list[Any]:
        """Decode finished states to PIL images, in order."""
        ...

    # Optional: ``cache_stats(self) -> Mapping[str, CacheStats]``, the runner's caches across
    # requests by name (see :func:`cache_stats_of`), reported on /metrics.


def cache_stats_of(runner: Any) -> Mapping[str, CacheStats]:
    method = getattr(runner, "cache_stats", None)
    return {} if method is None else method()


@dataclass(frozen=True)
class ARSequence:
    """One AR-engine request of an image: prompt token ids and vLLM ``SamplingParams`` arguments."""

    prompt_token_ids: tuple[int, ...]
    sampling: Mapping[str, Any]


@dataclass(frozen=True)
class ARImageJob:
    """The AR sequences that generate one image together (e.g. a guidance pair); the first one's tokens are the image."""

    sequences: tuple[ARSequence, ...]


class ARImageStage(Protocol):
    """A family that generates images as discrete tokens on the AR engine; the flow worker then decodes them.

    The orchestrator runs every job of :meth:`plan` on the AR engine, turns each job's tokens
    into codes with :meth:`codes` (None: the job did not complete as planned, run it again),
    and hands the codes to the flow worker in ``ImageRequest.image_codes``.
    """

    def engine_options(self, max_model_len: int) -> Mapping[str, Any]:
        """Extra vLLM engine arguments this stage needs (e.g. logits processors)."""
        ...

    def plan(self, request: ImageRequest) -> list[ARImageJob]:
        """One job per image of ``request``; ``ValueError`` for a request the family cannot do."""
        ...

    def codes(self, token_ids: Sequence[int]) -> tuple[int, ...] | None: ...


@dataclass(frozen=True)
class WeightFiles:
    """The safetensors files one engine loads for one component, and which of their tensors.

    Read by the memory plan (``engine/memory_plan.py``) from the files' headers, before any
    engine starts: it must describe what the engine really holds, so a component whose
    tensors share files with another engine's names its tensor-name prefixes.
    """

    component: str  # names the memory plan's line, e.g. "transformer"
    files: tuple[Path, ...]
    only: tuple[str, ...] = ()  # tensor-name prefixes kept; empty: every tensor
    skip: tuple[str, ...] = ()  # tensor-name prefixes dropped

    def keeps(self, name: str) -> bool:
        if self.only and not name.startswith(self.only):
            return False
        return not (self.skip and name.startswith(self.skip))


def safetensors_in(directory: Path) -> tuple[Path, ...]:
    """The safetensors files of a directory (every shard), in name order."""
    return tuple(sorted(directory.glob("*.safetensors")))


def diffusers_vlm_weight_files(model_dir: Path) -> dict[str, tuple[WeightFiles, ...]]:
    """``weight_files()`` of a diffusers checkpoint whose ``text_encoder/`` VLM answers questions.

    vLLM serves that VLM (staged); the flow worker loads it again to encode prompts itself,
    next to the transformer and the VAE."""

    def component(name: str) -> WeightFiles:
        return WeightFiles(name, safetensors_in(model_dir / name))

    return {
        "ar": (component("text_encoder"),),
        "flow": tuple(component(name) for name in ("transformer", "vae", "text_encoder")),
    }


class FamilyAdapter(Protocol):
    """The only place that knows a checkpoint's layout."""

    family: ClassVar[str]

    def __init__(self, model_dir: Path) -> None: ...

    def capabilities(self) -> Capabilities: ...

    def checkpoint_dtype(self) -> str | None:
        """The dtype the checkpoint declares for its weights (what ``--dtype auto`` serves on CUDA)."""
        ...

    def prepare_ar_model(self, staging_root: Path) -> Path | None:
        """A directory vLLM can load for understanding, or None if the family has no AR stage."""
        ...

    def render_chat(self, messages: tuple[ChatMessage, ...]) -> ChatPrompt:
        """The prompt of a chat; a family with a ``tool_parser`` also takes ``tools``
        (``render_chat(messages, tools)``) and has ``chat_tokenizer()``, which its parser reads."""
        ...

    def count_prompt_tokens(self, prompt: ChatPrompt | str) -> int:
        """Tokens the model sees: text, and each image at its expanded size."""
        ...

    def build_flow_runner(self, device: str, dtype: str, cache_bytes: int = 0) -> FlowRunner[Any]:
        """Load the generation stages; called inside the flow worker process.

        ``cache_bytes``: what the runner may keep across requests for reuse (prompt embeddings,
        prefix keys and values; setting ``flow_cache_gib``); a runner with no cache ignores it."""
        ...

    def weight_files(self) -> Mapping[str, tuple[WeightFiles, ...]]:
        """What each engine loads, keyed by engine: ``"ar"`` (vLLM) and ``"flow"`` (the flow worker).

        An engine the family does not run is absent. Weights both engines load (e.g. a VLM
        that answers questions and also encodes prompts) are listed under each: each
        process holds its own copy.
        """
        ...

    # Optional: ``ar_image_stage(self) -> ARImageStage | None``, for families whose images are AR
    # tokens (see :func:`ar_image_stage_of`); families without it generate in the flow worker.


@dataclass(frozen=True)
class ToolCalling:
    """How a family's chats call tools: vLLM's parser for its format, and the tokenizer it reads."""

    parser: str
    tokenizer: Any


def tool_calling_of(adapter: FamilyAdapter) -> ToolCalling | None:
    """The family's tool calling (``Capabilities.tool_parser`` with the adapter's ``chat_tokenizer()``)."""
    parser = adapter.capabilities().tool_parser
    if parser is None:
        return None
    return ToolCalling(parser, adapter.chat_tokenizer())  # type: ignore[attr-defined]


def ar_image_stage_of(adapter: FamilyAdapter) -> ARImageStage | None:
    method = getattr(adapter, "ar_image_stage", None)
    return None if method is None else method()
