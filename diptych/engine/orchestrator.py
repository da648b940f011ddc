"""The orchestrator: turns a request into the stages of the loaded family and runs them.

It owns admission (bounded, 429 past the limit), deadlines (504), cancellation (closing
a stream aborts the engine request) and the checks every request passes before compute.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import AsyncIterator
from contextlib import aclosing
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from diptych.engine.admission import AdmissionGate
from diptych.engine.devices import resolve_dtype
from diptych.engine.ar_images import generate_codes
from diptych.engine.errors import (
    CapabilityError,
    DeadlineExceededError,
    EngineUnavailableError,
    InvalidRequestError,
)
from diptych.engine.flow_client import FlowClient
from diptych.engine.memory_plan import apply_plan, placement_of
from diptych.engine.protocol import EngineStats, Health, HealthState
from diptych.engine.tool_calls import ToolCallParsing
from diptych.models.base import ChatPrompt, FamilyAdapter, ModelCard, ToolCalling, ar_image_stage_of, tool_calling_of
from diptych.types import ChatEvent, ChatFinished, ChatRequest, EngineConfig, ImageEvent, ImageRequest

if TYPE_CHECKING:
    from diptych.engine.ar_engine import AREngine

logger = logging.getLogger(__name__)

T = TypeVar("T")


class Orchestrator:
    def __init__(
        self, config: EngineConfig, adapter: FamilyAdapter, *, ar: AREngine | None, flow: FlowClient | None
    ) -> None:
        config = with_resolved_dtype(config, adapter)
        self._config = config
        self._adapter = adapter
        capabilities = adapter.capabilities()
        self._card = ModelCard(
            name=config.served_name,
            family=adapter.family,
            architecture=type(adapter).__name__,
            capabilities=capabilities,
            max_model_len=config.max_model_len,
            dtype=config.dtype,
        )
        self._ar = ar
        self._flow = flow
        self._ar_images = ar_image_stage_of(adapter)
        self._chat_gate = AdmissionGate("chat", config.limits.queue_depth)
        self._image_gate = AdmissionGate("image", config.limits.queue_depth)
        self._generated_tokens = 0
        self._stopping = False
        self._tool_calling: ToolCalling | None = None  # loaded by start(), off the event loop

    @property
    def card(self) -> ModelCard:
        return self._card

    # -- lifecycle ----------------------------------------------------------------------
    async def start(self) -> None:
        if self._ar is not None and self._card.capabilities.tool_parser is not None:
            # The tokenizer its tool parser reads: loaded once, off the event loop.
            self._tool_calling = await asyncio.to_thread(tool_calling_of, self._adapter)
        starts = []
        if self._ar is not None:
            starts.append(self._ar.start())
        if self._flow is not None:
            starts.append(self._flow.start())
        await asyncio.gather(*starts)

    async def shutdown(self) -> None:
        self._stopping = True
        stops = [e.shutdown() for e in (self._ar, self._flow) if e is not None]
        await asyncio.gather(*stops, return_exceptions=True)

    def health(self) -> Health:
        components: dict[str, HealthState] = {}
        if self._ar is not None:
            components["ar"] = self._ar.health_state
        if self._flow is not None:
            components["flow"] = self._flow.health_state
        states = set(components.values())
        state: HealthState
        if self._stopping:
            state = "stopping"
        elif states == {"ok"}:
            state = "ok"
        elif "restarting" in states and "down" not in states:
            state = "restarting"  # crash recovery under way (ar_engine.py, flow_client.py)
        elif "starting" in states and "down" not in states:
            state = "starting"
        elif "ok" in states:
            state = "degraded"
        else:
            state = "down"
        if self._flow is not None and len(self._flow.workers) > 1:
            # Each worker on its own; the pool's state above serves while any of them does.
            components.update({f"flow.{w.index}": w.state for w in self._flow.worker_stats()})
        return Health(state, components)

    def stats(self) -> EngineStats:
        return EngineStats(
            in_flight={"chat": self._chat_gate.in_flight, "image": self._image_gate.in_flight},
            active_batch={
                "ar": self._ar.scheduler_load.running if self._ar is not None else 0,
                "flow": self._flow.active_images if self._flow is not None else 0,
            },
            generated_tokens_total=self._generated_tokens,
            denoising_steps_total=self._flow.steps_total if self._flow is not None else 0,
            flow_caches=dict(self._flow.caches) if self._flow is not None else {},
            flow_workers=self._flow.worker_stats() if self._flow is not None else (),
        )

    # -- requests -----------------------------------------------------------------------
    async def chat(self, request: ChatRequest) -> AsyncIterator[ChatEvent]:
        if self._ar is None:
            raise CapabilityError(f"model {self._card.name} cannot answer questions (no 'understand' capability)",
                                  param="model", code="capability_not_supported")
        limits = self._config.limits
        if request.sampling.max_tokens > limits.max_output_tokens:
            raise InvalidRequestError(
                f"max_tokens {request.sampling.max_tokens} exceeds the limit of {limits.max_output_tokens}",
                param="max_tokens",
            )
        max_n = min(limits.max_n, limits.queue_depth)  # admission counts each choice (below)
        if request.sampling.n > max_n:
            raise InvalidRequestError(f"n={request.sampling.n} exceeds the limit of {max_n}", param="n")
        tools = self._tool_parsing(request)
        sampling = request.sampling if tools is None else tools.sampling
        # Each choice is a sequence in vLLM's batch: admission counts them all.
        with self._chat_gate.admit(request.sampling.n):
            deadline = asyncio.get_running_loop().time() + limits.request_timeout_s
            if request.tools is None:
                prompt = await asyncio.to_thread(self._adapter.render_chat, request.messages)
            else:
                prompt = await asyncio.to_thread(self._adapter.render_chat, request.messages,  # type: ignore[call-arg]
                                                 request.tools.tools)
            await self._check_prompt_length(prompt, "messages")
            stream = self._ar.generate(prompt, sampling, request.request_id)
            if tools is not None:
                stream = tools.parse(stream)
            # aclosing: when our consumer closes us, the engine stream is closed (aborted) now, not at GC.
            async with aclosing(_until(stream, deadline)) as events:
                async for event in events:
                    if isinstance(event, ChatFinished):
                        self._generated_tokens += event.completion_tokens
                    yield event

    def _tool_parsing(self, request: ChatRequest) -> ToolCallParsing | None:
        """The request's tool parsing, if it has tools; a 400 if the family's chats take none."""
        uses_tools = request.tools is not None or any(m.role == "tool" or m.tool_calls for m in request.messages)
        if not uses_tools:
            return None
        if self._tool_calling is None:
            raise CapabilityError(f"model {self._card.name} cannot call tools: its chat template renders none",
                                  param="tools" if request.tools else "messages", code="capability_not_supported")
        if request.tools is None:
            return None
        try:
            return ToolCallParsing(request.tools, self._tool_calling, request.sampling)
        except ValueError as exc:  # what vLLM's request model refuses (a tool's schema, say)
            raise InvalidRequestError(f"tools: {exc}", param="tools") from exc

    async def images(self, request: ImageRequest) -> AsyncIterator[ImageEvent]:
        self._check_image_request(request)
        assert self._flow is not None  # _check_image_request guarantees it
        for param, text in (("prompt", request.prompt), ("negative_prompt", request.negative_prompt)):
            if text:
                await self._check_prompt_length(text, param)
        with self._image_gate.admit():
            deadline = asyncio.get_running_loop().time() + self._config.limits.request_timeout_s
            async with aclosing(_until(self._image_events(request), deadline)) as events:
                async for event in events:
                    yield event

    async def _image_events(self, request: ImageRequest) -> AsyncIterator[ImageEvent]:
        """The family's image stages: AR image tokens first if it has them, then the flow worker."""
        assert self._flow is not None
        if self._ar_images is not None:
            if self._ar is None:
                raise EngineUnavailableError("this model generates images on the AR engine, which is not running")
            try:
                codes = await generate_codes(self._ar, self._ar_images, request)
            except ValueError as exc:
                raise InvalidRequestError(str(exc)) from exc
            request = dataclasses.replace(request, image_codes=codes)
        async with aclosing(self._flow.run(request)) as events:
            async for event in events:
                yield event

    async def _check_prompt_length(self, prompt: ChatPrompt | str, param: str) -> None:
        limit = self._config.limits.max_prompt_tokens
        tokens = await asyncio.to_thread(self._adapter.count_prompt_tokens, prompt)
        if tokens > limit:
            raise InvalidRequestError(
                f"{param} has {tokens} tokens, over the limit of {limit}", param=param, code="context_length_exceeded"
            )

    def _check_image_request(self, request: ImageRequest) -> None:
        caps = self._card.capabilities
        limits = self._config.limits
        task = "edit" if request.is_edit else "generate"
        if not getattr(caps, task) or self._flow is None:
            raise CapabilityError(
                f"model {self._card.name} does not support the '{task}' capability "
                f"(it supports: {', '.join(caps.names())})",
                param="model",
                code="capability_not_supported",
            )
        if self._stopping:
            raise EngineUnavailableError("the server is shutting down")
        if request.n > limits.max_n:
            raise InvalidRequestError(f"n={request.n} exceeds the limit of {limits.max_n}", param="n")
        if request.num_inference_steps > limits.max_steps:
            raise InvalidRequestError(
                f"num_inference_steps={request.num_inference_steps} exceeds the limit of {limits.max_steps}",
                param="num_inference_steps",
            )
        max_side = min(caps.max_side, limits.max_image_side)
        for side_name, side in (("width", request.width), ("height", request.height)):
            if not caps.min_side <= side <= max_side or side % caps.size_multiple:
                raise InvalidRequestError(
                    f"size {request.width}x{request.height} is not supported: each side must be between "
                    f"{caps.min_side} and {max_side} and a multiple of {caps.size_multiple} ({side_name} is {side})",
                    param="size",
                    code="unsupported_size",
                )
        if len(request.source_images) > caps.max_source_images:
            raise InvalidRequestError(
                f"{len(request.source_images)} source images exceed this model's limit of {caps.max_source_images}",
                param="image",
            )
        if request.mask is not None and not caps.supports_mask:
            raise InvalidRequestError(f"model {self._card.name} does not support masks", param="mask")


# Below this many bytes of weights, a language model on CPU starts eagerly under "auto": its
# compile would cost more start-up than its faster decoding saves (docs/benchmarks.md).
EAGER_BELOW_BYTES = 1 << 30


def with_resolved_dtype(config: EngineConfig, adapter: FamilyAdapter) -> EngineConfig:
    """``config`` with its dtype setting ("auto" too) made the concrete dtype both engines serve in."""
    return dataclasses.replace(config, dtype=resolve_dtype(config.dtype, config.device, adapter.checkpoint_dtype()))


def runs_eagerly(config: EngineConfig, ar_dir: Path) -> bool:
    """Whether vLLM skips torch.compile for the AR model in ``ar_dir`` (setting ``ar_compile``)."""
    if config.ar_compile != "auto":
        return config.ar_compile == "eager"
    weights = sum(path.stat().st_size for path in ar_dir.rglob("*.safetensors"))
    return config.device == "cpu" and weights < EAGER_BELOW_BYTES


def build_orchestrator(config: EngineConfig, adapter: FamilyAdapter, *, log_level: str = "INFO") -> Orchestrator:
    """The orchestrator with the engines the adapter's capabilities call for.

    Their memory is planned first (``memory_plan.py``): on a GPU, a plan that does not fit
    raises :class:`~diptych.engine.memory_plan.MemoryPlanError` before anything is staged or started.
    """
    from diptych.engine.ar_engine import AREngine

    config = apply_plan(with_resolved_dtype(config, adapter), adapter)
    placement = placement_of(adapter.capabilities(), config.device)
    ar = None
    if "ar" in placement:
        ar_dir = adapter.prepare_ar_model(config.cache_dir / "staging")
        if ar_dir is None:
            raise ValueError(f"{adapter.family} declares understanding but has no AR model")
        stage = ar_image_stage_of(adapter)
        ar = AREngine(ar_dir, config, enforce_eager=runs_eagerly(config, ar_dir),
                      options=stage.engine_options(config.max_model_len) if stage is not None else None)
    flow = FlowClient(config, log_level=log_level) if "flow" in placement else None
    return Orchestrator(config, adapter, ar=ar, flow=flow)


async def _until(stream: AsyncIterator[T], deadline: float) -> AsyncIterator[T]:
    """Relay ``stream`` until ``deadline`` (event-loop time); past it, abort and raise 504's error."""
    loop = asyncio.get_running_loop()
    try:
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise DeadlineExceededError("the request exceeded its deadline and was cancelled")
            try:
                item = await asyncio.wait_for(anext(stream), remaining)
            except StopAsyncIteration:
                return
            except TimeoutError as exc:
                raise DeadlineExceededError("the request exceeded its deadline and was cancelled") from exc
            yield item
    finally:
        await stream.aclose()  # type: ignore[attr-defined]
