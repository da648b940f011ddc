"""The ground: values that cross the gateway ↔ engine boundary (and the engine ↔ worker one).

Requests, events, and the engine configuration derived from the settings. Frozen dataclasses
of plain values and PIL images: picklable, free of HTTP and tensors. Every layer may import
this module; it imports no other module of the package.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from PIL import Image


@dataclass(frozen=True)
class TextPart:
    text: str


@dataclass(frozen=True)
class ImagePart:
    image: Image.Image


@dataclass(frozen=True)
class ToolCall:
    """A call of one of the request's tools, as the model wrote it (in a reply, or in the history)."""

    id: str
    name: str
    arguments: str  # a JSON object, as text


@dataclass(frozen=True)
class ChatMessage:
    role: Literal["system", "user", "assistant", "tool"]
    content: tuple[TextPart | ImagePart, ...]
    tool_calls: tuple[ToolCall, ...] = ()  # an assistant's calls
    tool_call_id: str | None = None  # a tool message: the call it answers


@dataclass(frozen=True)
class Tool:
    """A function the model may call: its name, what it does, and its parameters' JSON Schema."""

    name: str
    description: str | None = None
    parameters: str | None = None  # a JSON Schema, serialised
    strict: bool | None = None  # OpenAI's: calls are held to ``parameters`` (vLLM constrains them)


@dataclass(frozen=True)
class ToolUse:
    """The request's tools and how the model may use them (OpenAI's ``tools``, ``tool_choice``,
    ``parallel_tool_calls``).

    ``choice``: "auto" lets the model choose; "required" makes it call at least one tool; "none"
    makes it answer in text; "function" makes it call ``function``.
    """

    tools: tuple[Tool, ...]
    choice: Literal["none", "auto", "required", "function"] = "auto"
    function: str | None = None
    parallel: bool = True


@dataclass(frozen=True)
class StructuredOutput:
    """Decoding constrained by vLLM's structured outputs (its ``StructuredOutputsParams``).

    ``kind`` names the constraint and ``spec`` holds it: "json_object" (none: any JSON object),
    "json" (a JSON Schema, serialised), "regex", "choice" (a JSON list of strings), "grammar"
    (EBNF), "structural_tag" (vLLM's structural tag, serialised; how tool calls are constrained).
    """

    kind: Literal["json_object", "json", "regex", "choice", "grammar", "structural_tag"] = "json_object"
    spec: str = ""
    disable_any_whitespace: bool = False
    disable_additional_properties: bool = False
    whitespace_pattern: str | None = None

    # The options beside the constraint, named as vLLM (and the request's structured_outputs) names them.
    OPTIONS: ClassVar[tuple[str, ...]] = ("disable_any_whitespace", "disable_additional_properties",
                                          "whitespace_pattern")

    @classmethod
    def options_of(cls, source: Any) -> dict[str, Any]:
        """The options as ``source`` (a request's structured_outputs, vLLM's params) holds them."""
        return {name: getattr(source, name) for name in cls.OPTIONS}

    def vllm_fields(self) -> dict[str, Any]:
        """The arguments of vLLM's ``StructuredOutputsParams`` (and of its request's ``structured_outputs``)."""
        value: Any = True if self.kind == "json_object" else json.loads(self.spec) if self.kind == "choice" else self.spec
        return {self.kind: value, **self.options_of(self)}


@dataclass(frozen=True)
class SamplingOptions:
    max_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0: no top-k truncation
    seed: int | None = None
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False  # decode max_tokens tokens whatever is sampled (benchmarks)
    # vLLM's SamplingParams of the same names (OpenAI's and vLLM's own chat fields).
    min_tokens: int = 0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    stop_token_ids: tuple[int, ...] = ()
    logit_bias: tuple[tuple[int, float], ...] = ()  # token id → bias added to its logit
    skip_special_tokens: bool = True
    include_stop_str_in_output: bool = False
    logprobs: int | None = None  # None: none; k: each token's log-probability and its k most likely alternatives
    n: int = 1  # independent completions of the one prompt (choices); vLLM seeds choice i with seed + i
    structured: StructuredOutput | None = None
    allowed_token_ids: tuple[int, ...] = ()  # empty: all
    bad_words: tuple[str, ...] = ()  # words never generated
    spaces_between_special_tokens: bool = True


@dataclass(frozen=True)
class ChatRequest:
    request_id: str
    messages: tuple[ChatMessage, ...]
    sampling: SamplingOptions = field(default_factory=SamplingOptions)
    tools: ToolUse | None = None


@dataclass(frozen=True)
class TokenLogprob:
    """A generated token's text and log-probability, and the most likely tokens at its position."""

    token: str
    logprob: float
    top: tuple[tuple[str, float], ...] = ()


# "tool_calls": the choice ended calling tools.
FinishReason = Literal["stop", "length", "tool_calls"]


@dataclass(frozen=True)
class ToolCallDelta:
    """New pieces of a choice's ``index``-th tool call: its id and name first, then its arguments' text."""

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""


@dataclass(frozen=True)
class TextDelta:
    """New text of one choice of a chat completion, as it is decoded.

    The last delta of a choice carries its ``finish_reason`` (its text may then be empty).
    """

    text: str
    num_tokens: int
    prompt_tokens: int = 0  # the prompt's tokens as the engine counted them (0: not known yet)
    logprobs: tuple[TokenLogprob, ...] = ()  # one per new token, when asked for
    index: int = 0  # which choice (``SamplingOptions.n``)
    finish_reason: FinishReason | None = None
    tool_calls: tuple[ToolCallDelta, ...] = ()  # the parsed calls' new pieces (the text then holds none of them)


@dataclass(frozen=True)
class ChatFinished:
    """The end of a chat request: each choice's finish reason, and the tokens of all of them."""

    finish_reasons: tuple[FinishReason, ...]
    prompt_tokens: int
    completion_tokens: int  # summed over the choices


ChatEvent = TextDelta | ChatFinished


@dataclass(frozen=True)
class ImageRequest:
    """One generate or edit request; ``source_images`` empty means text-to-image."""

    request_id: str
    prompt: str
    width: int
    height: int
    n: int = 1
    negative_prompt: str | None = None
    num_inference_steps: int = 20
    guidance_scale: float = 4.0
    seed: int | None = None
    source_images: tuple[Image.Image, ...] = ()
    mask: Image.Image | None = None
    partial_images: int = 0
    # Sampling of AR image tokens (families that generate images token by token).
    temperature: float = 1.0
    top_k: int = 0  # 0: no top-k truncation
    top_p: float = 1.0
    # Set by the orchestrator for such families: each image's codes from the AR engine, for the flow worker to decode.
    image_codes: tuple[tuple[int, ...], ...] = ()

    @property
    def is_edit(self) -> bool:
        return bool(self.source_images)


@dataclass(frozen=True)
class CacheStats:
    """A cache the flow worker keeps across requests: lookups that found or missed, and what it holds."""

    hits: int
    misses: int
    bytes: int
    entries: int


@dataclass(frozen=True)
class ImageProgress:
    step: int
    total: int


@dataclass(frozen=True)
class PartialImage:
    """A preview decoded from the predicted clean latent of image ``index`` at ``step``."""

    index: int
    partial_index: int
    image: Image.Image
    step: int
    total: int


@dataclass(frozen=True)
class ImagesFinished:
    images: tuple[Image.Image, ...]
    prompt_tokens: int = 0


ImageEvent = ImageProgress | PartialImage | ImagesFinished


@dataclass(frozen=True)
class Limits:
    """Request limits; anything past them is refused with a 4xx before it reaches a model.

    Each field is filled from the setting of the same name (``Settings.limits``).
    """

    max_image_side: int
    max_n: int
    max_steps: int
    max_prompt_tokens: int
    max_output_tokens: int
    max_images_per_request: int
    queue_depth: int
    request_timeout_s: float


@dataclass(frozen=True)
class EngineConfig:
    """What an engine is built from. Each field is filled from the setting of the same name,
    unless ``Settings.engine_config`` gives it; a field that is neither is an error there."""

    model_dir: Path
    served_name: str
    device: str
    dtype: str  # a setting ("auto" too) until build_orchestrator resolves it for the checkpoint
    cache_dir: Path
    kv_cache_gib: float
    max_model_len: int
    max_num_seqs: int
    ar_startup_timeout_s: float
    limits: Limits
    ar_compile: str = "auto"
    # The flow worker's activation budget; None: a share of the device's free memory
    # (on a GPU, the memory plan fills it in before the worker starts: engine/memory_plan.py).
    flow_memory_gib: float | None = None
    # What the flow worker keeps across requests for reuse (its runner's caches).
    flow_cache_gib: float = 0.5
    # The AR engine's device (None: ``device``), and one flow worker per entry of
    # ``flow_devices`` (empty: one on ``device``); engine/parallel.py checks them.
    ar_device: str | None = None
    flow_devices: tuple[str, ...] = ()
    # vLLM's parallelism (engine/parallel.py checks the combination before anything starts).
    tensor_parallel_size: int = 1
    pipeline_parallel_size: int = 1
    data_parallel_size: int = 1
    distributed_executor_backend: str | None = None
