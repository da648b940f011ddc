"""Scenarios: which requests a load sends, as plain data the driver can send with httpx.

``vqa`` asks questions about pictures (chat), ``generate`` makes images from prompts,
``edit`` changes pictures, ``mixed`` takes the three in turn. Request ``i`` of a scenario is
always the same request (its picture, prompt and seed follow from ``i``), so two runs of
one scenario send the same work. Prompts and pictures do not repeat until the set of
pictures (or 180 prompts) is used up, and the points of a sweep continue the numbering, so
no point is served from caches that an earlier point filled.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any, Literal

from diptych.bench.load.inputs import InputImage

Kind = Literal["chat", "generate", "edit"]
SCENARIOS: dict[str, tuple[Kind, ...]] = {
    "vqa": ("chat",),
    "generate": ("generate",),
    "edit": ("edit",),
    "mixed": ("chat", "generate", "edit"),
}
_PATHS: dict[Kind, str] = {
    "chat": "/v1/chat/completions",
    "generate": "/v1/images/generations",
    "edit": "/v1/images/edits",
}
_COLOURS = ("red", "blue", "green", "yellow", "purple", "orange")
_SHAPES = ("circle", "square", "triangle", "star", "cross", "ring")
_PLACES = ("on a white background", "next to a tree", "in the middle", "at the top", "under the sun")


def prompt(slot: int) -> str:
    """A text-to-image prompt, different for each of the first 180 slots: servers cache prompt
    encodings, and a benchmark that repeats prompts would measure the cache."""
    colour = _COLOURS[slot % len(_COLOURS)]
    shape = _SHAPES[(slot // len(_COLOURS)) % len(_SHAPES)]
    place = _PLACES[(slot // (len(_COLOURS) * len(_SHAPES))) % len(_PLACES)]
    return f"a {colour} {shape} {place}"


@dataclass(frozen=True)
class RequestOptions:
    """What every request of a run shares (from the command line)."""

    model: str
    size: str = "64x64"
    steps: int = 4
    guidance_scale: float | None = None
    partial_images: int = 1
    max_tokens: int = 32
    stream: bool = True
    seed: int = 0


@dataclass(frozen=True)
class RequestSpec:
    """One HTTP request: a JSON body, or multipart fields and files (edits)."""

    kind: Kind
    path: str
    stream: bool
    json: dict[str, Any] | None = None
    form: dict[str, str] | None = None
    files: tuple[tuple[str, tuple[str, bytes, str]], ...] = ()


@dataclass(frozen=True)
class Scenario:
    name: str
    options: RequestOptions
    images: tuple[InputImage, ...]

    def __post_init__(self) -> None:
        if self.name not in SCENARIOS:
            raise ValueError(f"unknown scenario {self.name!r}; choose from {', '.join(SCENARIOS)}")
        if not self.images:
            raise ValueError(f"scenario {self.name!r} needs at least one input picture")

    def kind(self, index: int) -> Kind:
        kinds = SCENARIOS[self.name]
        return kinds[index % len(kinds)]

    def request(self, index: int) -> RequestSpec:
        kind = self.kind(index)
        # Index the pictures by the request's position among those of its kind, so a mixed run
        # goes through all pictures too (not only every third one).
        slot = index // len(SCENARIOS[self.name])
        image = self.images[slot % len(self.images)]
        if kind == "chat":
            return RequestSpec(kind, _PATHS[kind], self.options.stream, json=self._chat(image, slot))
        fields = self._image_fields(slot, image.instruction if kind == "edit" else prompt(slot))
        if kind == "generate":
            return RequestSpec(kind, _PATHS[kind], self.options.stream, json=fields)
        form = {key: _form_value(value) for key, value in fields.items()}
        return RequestSpec(kind, _PATHS[kind], self.options.stream, form=form,
                           files=(("image", (image.name, image.data, image.mime)),))

    def _chat(self, image: InputImage, slot: int) -> dict[str, Any]:
        url = f"data:{image.mime};base64,{base64.b64encode(image.data).decode()}"
        body: dict[str, Any] = {
            "model": self.options.model,
            "messages": [{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": url}},
                {"type": "text", "text": image.question},
            ]}],
            "max_tokens": self.options.max_tokens,
            "seed": self.options.seed + slot,
        }
        if self.options.stream:
            # The usage chunk gives the server's own count of output tokens.
            body |= {"stream": True, "stream_options": {"include_usage": True}}
        return body

    def _image_fields(self, slot: int, prompt: str) -> dict[str, Any]:
        fields: dict[str, Any] = {
            "model": self.options.model, "prompt": prompt, "size": self.options.size,
            "num_inference_steps": self.options.steps, "seed": self.options.seed + slot,
            "response_format": "b64_json", "output_format": "png",
        }
        if self.options.guidance_scale is not None:
            fields["guidance_scale"] = self.options.guidance_scale
        if self.options.stream:
            fields |= {"stream": True, "partial_images": self.options.partial_images}
        return fields


def _form_value(value: Any) -> str:
    # Multipart fields are strings; booleans as JSON spells them, which the server's schema reads.
    return ("true" if value else "false") if isinstance(value, bool) else str(value)
