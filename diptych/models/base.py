"""What every model family adapter provides, and the capability data it declares."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol, TypeVar

from diptych.engine.types import ChatMessage, ImageRequest


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
    default_steps: int = 20
    default_guidance_scale: float = 4.0

    def names(self) -> tuple[str, ...]:
        return tuple(n for n in ("understand", "generate", "edit") if getattr(self, n))


@dataclass(frozen=True)
class ModelCard:
    """What `/v1/models` says of the loaded model."""

    name: str
    family: str
    architecture: str
    capabilities: Capabilities
    max_model_len: int


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


class FlowRunner(Protocol[S]):
    """The denoising stages of a family, run inside the flow worker process.

    A runner keeps no per-request state on ``self``: everything a request needs lives in
    the state object that :meth:`prepare` returns, so one runner serves overlapping requests.
    """

    def prepare(self, request: ImageRequest) -> list[S]:
        """Encode the prompt (and source images) and draw initial latents: one state per image."""
        ...

    def step(self, states: list[S]) -> None:
        """Advance each state by one denoising step."""
        ...

    def preview(self, state: S) -> Any:
        """A PIL preview decoded from the state's predicted clean latent."""
        ...

    def decode(self, states: list[S]) -> list[Any]:
        """Decode finished states to PIL images."""
        ...


class FamilyAdapter(Protocol):
    """The only place that knows a checkpoint's layout."""

    family: ClassVar[str]

    def __init__(self, model_dir: Path) -> None: ...

    def capabilities(self) -> Capabilities: ...

    def prepare_ar_model(self, staging_root: Path) -> Path | None:
        """A directory vLLM can load for understanding, or None if the family has no AR stage."""
        ...

    def render_chat(self, messages: tuple[ChatMessage, ...]) -> ChatPrompt: ...

    def count_prompt_tokens(self, prompt: ChatPrompt | str) -> int:
        """Tokens the model sees: text, and each image at its expanded size."""
        ...

    def build_flow_runner(self, device: str) -> FlowRunner[Any]:
        """Load the generation stages; called inside the flow worker process."""
        ...
