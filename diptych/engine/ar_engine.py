"""The AR engine: vLLM's ``AsyncLLM`` (v1) serving understanding requests.

One ``AsyncLLM`` per process tree; its engine core runs in a process of its own. This
wrapper builds it without blocking the event loop, turns Diptych's sampling options into
vLLM's, streams text deltas, aborts a request whose stream is closed early, and maps
vLLM's errors onto :mod:`diptych.engine.errors`. It never branches on a model family: the
caller hands it a vLLM-loadable directory and prompts already rendered by the adapter.

**Crash recovery.** When the engine-core process dies, vLLM fails every open stream with
``EngineDeadError`` (503 here) and marks the ``AsyncLLM`` errored. A watchdog task sees
that within a fraction of a second, reports ``restarting``, tears the dead ``AsyncLLM``
down and builds a new one (a new engine core); requests meanwhile get 503.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import os
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from diptych.compat.vllm_internals import (
    build_async_llm,
    fail_open_requests,
    render_prompt,
    require_supported_vllm,
    stop_output_handler,
    vllm_error_kind,
)
from diptych.engine import parallel
from diptych.engine.ar_stats import SchedulerLoad, scheduler_load_logger
from diptych.engine.children import sigint_blocked
from diptych.engine.devices import resolve_dtype
from diptych.engine.errors import EngineError, EngineUnavailableError, InvalidRequestError, QueueFullError
from diptych.engine.protocol import HealthState
from diptych.models.base import ChatPrompt
from diptych.types import ChatFinished, EngineConfig, SamplingOptions, TextDelta, TokenLogprob

if TYPE_CHECKING:
    from vllm import SamplingParams

    from diptych.compat.vllm_internals import AsyncLLM

logger = logging.getLogger(__name__)

_GIB = 1 << 30
_WATCH_INTERVAL_S = 0.2  # how often the watchdog looks at the engine core
_RESTART_BACKOFF_S = (1.0, 5.0, 15.0, 30.0)  # between failed rebuilds; the last repeats
_PLUGIN_NAME = "diptych"  # our entry point in the vllm.general_plugins group


@dataclass(frozen=True)
class ARTextDelta(TextDelta):
    """A :class:`TextDelta` that also carries the new token ids.

    ``text`` may be empty: a token can complete no printable text yet (part of a UTF-8
    sequence, held back for a stop string) or none at all (the end-of-turn token).
    """

    token_ids: tuple[int, ...] = ()


class AREngine:
    """Understanding requests on vLLM; ``start`` once, ``generate`` concurrently, ``shutdown`` once."""

    def __init__(
        self,
        model_path: Path,
        config: EngineConfig,
        *,
        enforce_eager: bool = False,
        options: Mapping[str, Any] | None = None,
    ) -> None:
        """``model_path``: a directory vLLM loads (see the family adapter's ``prepare_ar_model``).

        ``enforce_eager`` skips vLLM's torch.compile warm-up: a faster start, slower decoding.
        ``options``: extra vLLM engine arguments a family's stage needs (``ARImageStage.engine_options``).
        """
        self._options = dict(options or {})
        self._model_path = Path(model_path)
        self._config = config
        self._enforce_eager = enforce_eager
        self._llm: AsyncLLM | None = None
        self._state: HealthState = "starting"
        self._detail = ""
        self._load = SchedulerLoad()
        self._watchdog: asyncio.Task[None] | None = None
        self.restarts = 0
        # The server's own GPU numbering, before vLLM's placement narrows it (parallel.vllm_visible_devices).
        self._inherited_visible = os.environ.get("CUDA_VISIBLE_DEVICES")

    # ----------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        """Build the engine (about half a minute for a tiny model on CPU) off the event loop."""
        if self._llm is not None:
            return
        self._state = "starting"
        await self._start_llm()
        self._watchdog = asyncio.create_task(self._watch(), name="diptych-ar-watchdog")

    async def _start_llm(self) -> None:
        try:
            box = await asyncio.wait_for(asyncio.to_thread(self._build), timeout=self._config.ar_startup_timeout_s)
            # Emptied at once: modules vLLM imports lazily during the build keep their frames
            # alive, hence the worker thread's frame and its return value. Through the box
            # they keep nothing, so shutdown can really free the AsyncLLM (whose finaliser,
            # left for interpreter exit, would fail there).
            llm = box.pop()
        except Exception as exc:
            # A timed-out build keeps running in its thread; the engine stays down regardless.
            if self._state != "stopping":
                self._state, self._detail = "down", f"AR engine failed to start: {exc!r}"
            logger.exception("AR engine failed to start from %s", self._model_path)
            raise EngineUnavailableError(f"AR engine failed to start: {exc!r}", code="engine_start_failed") from exc
        if self._state == "stopping":  # shutdown began while it was building
            await _close(llm)
            raise EngineUnavailableError("AR engine is stopping", code="engine_unavailable")
        self._llm = llm
        self._state, self._detail = "ok", ""
        logger.info("AR engine ready: %s", self._model_path)

    async def _watch(self) -> None:
        """Rebuild the engine when its core process dies; runs until shutdown."""
        while self._state != "stopping":
            await asyncio.sleep(_WATCH_INTERVAL_S)
            llm = self._llm
            if llm is None or self._state != "ok" or not llm.errored:
                continue
            logger.error("AR engine core died; rebuilding the engine")
            self._state, self._detail = "restarting", "AR engine core died; restarting it"
            self._llm = None
            self._load.running = self._load.waiting = 0  # nothing runs in a dead core
            await _close(llm)
            for attempt in itertools.count():
                self.restarts += 1
                self._state = "restarting"
                try:
                    await self._start_llm()
                    break
                except EngineUnavailableError:
                    if self._state == "stopping":
                        return
                await asyncio.sleep(_RESTART_BACKOFF_S[min(attempt, len(_RESTART_BACKOFF_S) - 1)])
                if self._state == "stopping":
                    return

    def _build(self) -> list[AsyncLLM]:
        from diptych.compat import install

        require_supported_vllm()  # before anything else: a clear error, not one from deep inside vLLM
        install()  # this process; vLLM's own processes get it through the plugin entry point
        _allow_plugin()
        engine_args = dict(
            model=str(self._model_path),
            # Resolved here too (the orchestrator already has, for its card): vLLM's own "auto"
            # would downcast float32 to bfloat16 on CPU.
            dtype=resolve_dtype(self._config.dtype, self._config.device, _checkpoint_dtype(self._model_path)),
            enforce_eager=self._enforce_eager,
            served_model_name=self._config.served_name,
            max_model_len=self._config.max_model_len,
            max_num_seqs=self._config.max_num_seqs,
            enable_prefix_caching=True,
            # An explicit budget: on CPU, vLLM's default reserves 92 % of the NUMA node and
            # fails; on a GPU the flow decoder shares the device.
            kv_cache_memory_bytes=int(self._config.kv_cache_gib * _GIB),
            limit_mm_per_prompt={"image": self._config.limits.max_images_per_request, "video": 0},
            # Scheduler stats feed health and the abort check; request logging stays off.
            disable_log_stats=False,
            enable_log_requests=False,
            **parallel.engine_args(self._config),
            **self._options,
        )
        visible = parallel.vllm_visible_devices(self._config, self._inherited_visible)
        if visible is not None:
            # Read by vLLM's processes, spawned below; the flow workers restore the server's own.
            os.environ["CUDA_VISIBLE_DEVICES"] = visible
            logger.info("vLLM placed on GPUs %s", visible)
        binding = parallel.cpu_binding(self._config)
        if binding is not None and parallel.CPU_BIND_VARIABLE not in os.environ:  # a binding of one's own wins
            os.environ[parallel.CPU_BIND_VARIABLE] = binding  # read by vLLM's rank processes, spawned below
            logger.info("vLLM ranks bound to CPUs %s", binding)
        # Its engine core (forked or spawned now) inherits the block: Ctrl+C is the gateway's.
        with sigint_blocked():
            return [build_async_llm(engine_args, stat_loggers=[scheduler_load_logger(self._load)])]

    async def shutdown(self) -> None:
        """Stop the engine core process and release the KV cache."""
        self._state = "stopping"
        watchdog, self._watchdog = self._watchdog, None
        if watchdog is not None:
            # A rebuild under way finishes and closes what it built (see _start_llm).
            await asyncio.wait({watchdog}, timeout=self._config.ar_startup_timeout_s)
            watchdog.cancel()
            await asyncio.gather(watchdog, return_exceptions=True)
        llm, self._llm = self._llm, None
        if llm is None:
            return
        await _close(llm)
        logger.info("AR engine stopped")

    # ----------------------------------------------------------------- health

    @property
    def health_state(self) -> HealthState:
        if self._state == "ok" and self._llm is not None and self._llm.errored:
            # Dead since the watchdog last looked: it restarts the engine (or none runs: down).
            return "restarting" if self._watchdog is not None else "down"
        return self._state

    @property
    def health_detail(self) -> str:
        if self.health_state in ("down", "restarting") and not self._detail:
            return "AR engine core died"
        return self._detail

    def is_healthy(self) -> bool:
        return self.health_state == "ok"

    def num_unfinished_requests(self) -> int:
        """Requests this process still tracks (admitted, not finished or aborted)."""
        return 0 if self._llm is None else self._llm.get_num_unfinished_requests()

    @property
    def scheduler_load(self) -> SchedulerLoad:
        """The engine core's scheduler, as of its last reported step."""
        return self._load

    # ----------------------------------------------------------------- requests

    async def generate(
        self, prompt: ChatPrompt, sampling: SamplingOptions, request_id: str
    ) -> AsyncIterator[TextDelta | ChatFinished]:
        """Stream :class:`ARTextDelta` per engine step, then one :class:`ChatFinished` with token usage.

        Closing the iterator early (or cancelling its consumer) aborts the request in
        vLLM, so it stops taking scheduler steps.
        """
        llm = self._require_running()
        params = _sampling_params(sampling)
        try:
            engine_input = await _render(llm, prompt)
        except Exception as exc:
            if died := self._died_meanwhile(llm):
                raise died from exc
            raise
        stream = llm.generate(engine_input, params, request_id)
        prompt_tokens = completion_tokens = 0
        finish_reasons: dict[int, Literal["stop", "length"]] = {}
        try:
            while True:
                try:
                    output = await stream.__anext__()
                except StopAsyncIteration:
                    raise EngineError(f"request {request_id} ended without finishing") from None
                except Exception as exc:
                    mapped = self._died_meanwhile(llm) or _map_error(exc)
                    if mapped is exc:
                        raise
                    raise mapped from exc
                if output.prompt_token_ids:
                    prompt_tokens = len(output.prompt_token_ids)
                # With n > 1 one output may hold several choices' deltas (vLLM merges them
                # when this consumer falls behind), each with its index.
                for completion in output.outputs:
                    completion_tokens += len(completion.token_ids)
                    finish = None
                    if completion.finished():
                        finish = finish_reasons[completion.index] = _finish_reason(completion.finish_reason, request_id)
                    if completion.token_ids or completion.text or finish:
                        yield ARTextDelta(
                            text=completion.text,
                            num_tokens=len(completion.token_ids),
                            prompt_tokens=prompt_tokens,
                            logprobs=_token_logprobs(completion, sampling.logprobs),
                            index=completion.index,
                            finish_reason=finish,
                            token_ids=tuple(completion.token_ids),
                        )
                if output.finished:
                    yield ChatFinished(
                        finish_reasons=tuple(finish_reasons[i] for i in range(sampling.n)),
                        prompt_tokens=prompt_tokens,
                        completion_tokens=completion_tokens,
                    )
                    return
        finally:
            # Unfinished (closed early, cancelled, failed): vLLM's generator aborts on close.
            await stream.aclose()

    def _died_meanwhile(self, llm: AsyncLLM) -> EngineUnavailableError | None:
        """The error for a request whose engine died (or was replaced) while it ran, if that happened.

        A request cut off by the death of its engine core is a 503, whatever exception the
        half-torn-down engine raised at it.
        """
        if llm.errored or llm is not self._llm:
            return EngineUnavailableError("AR engine core died; the request was not completed", code="engine_dead")
        return None

    async def generate_tokens(
        self, prompt_token_ids: Sequence[int], sampling: Mapping[str, Any], request_id: str
    ) -> list[int]:
        """All output token ids of one request given as token ids (``sampling``: ``SamplingParams`` arguments).

        For AR image stages: no detokenisation, no streaming. Closing early aborts it in vLLM.
        """
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        llm = self._require_running()
        params = SamplingParams(**sampling, output_kind=RequestOutputKind.FINAL_ONLY)
        engine_input = await _render(llm, ChatPrompt(text="", images=()), token_ids=list(prompt_token_ids))
        stream = llm.generate(engine_input, params, request_id)
        try:
            async for output in stream:
                if output.finished:
                    _finish_reason(output.outputs[0].finish_reason, request_id)  # raises if aborted
                    return list(output.outputs[0].token_ids)
        except EngineError:
            raise
        except Exception as exc:
            mapped = _map_error(exc)
            if mapped is exc:
                raise
            raise mapped from exc
        finally:
            await stream.aclose()
        raise EngineError(f"request {request_id} ended without finishing")

    def _require_running(self) -> AsyncLLM:
        if self._llm is None or self.health_state != "ok":
            raise EngineUnavailableError(f"AR engine is {self.health_state}", code="engine_unavailable")
        return self._llm


async def _close(llm: AsyncLLM) -> None:
    """Stop an ``AsyncLLM`` (alive or with a dead core) and fail the streams it still has open."""
    # Stop reading outputs first: otherwise the reader sees the core exit and logs it as a crash.
    await stop_output_handler(llm)
    # Streams still open would wait forever for outputs nobody reads now: fail them
    # (they surface as EngineUnavailableError), as vLLM does when its core dies.
    fail_open_requests(llm)
    await asyncio.to_thread(llm.shutdown)


async def _render(llm: AsyncLLM, prompt: ChatPrompt, *, token_ids: list[int] | None = None) -> Any:
    """Tokenise and run the multimodal processor (image → patches, placeholders expanded).

    vLLM's renderer does this off the event loop; passing raw prompts to ``generate``
    would do the same but is deprecated.
    """
    inputs: dict[str, Any] = {"prompt": prompt.text} if token_ids is None else {"prompt_token_ids": token_ids}
    if prompt.images:
        inputs["multi_modal_data"] = {"image": list(prompt.images)}
    try:
        return await render_prompt(llm, inputs)
    except Exception as exc:
        mapped = _map_error(exc)
        if mapped is exc:
            raise
        raise mapped from exc


def _sampling_params(sampling: SamplingOptions) -> SamplingParams:
    from vllm import SamplingParams
    from vllm.sampling_params import RequestOutputKind, StructuredOutputsParams

    structured = None if sampling.structured is None else StructuredOutputsParams(**sampling.structured.vllm_fields())

    return SamplingParams(
        n=sampling.n,
        max_tokens=sampling.max_tokens,
        temperature=sampling.temperature,
        top_p=sampling.top_p,
        top_k=sampling.top_k,  # 0 disables top-k in vLLM too
        seed=sampling.seed,
        stop=list(sampling.stop) or None,
        ignore_eos=sampling.ignore_eos,
        min_tokens=sampling.min_tokens,
        min_p=sampling.min_p,
        repetition_penalty=sampling.repetition_penalty,
        presence_penalty=sampling.presence_penalty,
        frequency_penalty=sampling.frequency_penalty,
        stop_token_ids=list(sampling.stop_token_ids) or None,
        logit_bias=dict(sampling.logit_bias) or None,
        skip_special_tokens=sampling.skip_special_tokens,
        include_stop_str_in_output=sampling.include_stop_str_in_output,
        logprobs=sampling.logprobs,
        structured_outputs=structured,
        allowed_token_ids=list(sampling.allowed_token_ids) or None,
        bad_words=list(sampling.bad_words) or None,
        spaces_between_special_tokens=sampling.spaces_between_special_tokens,
        output_kind=RequestOutputKind.DELTA,
    )


def _token_logprobs(completion: Any, top: int | None) -> tuple[TokenLogprob, ...]:
    """vLLM's per-token logprob dicts (token id → Logprob with rank and decoded text) as :class:`TokenLogprob`."""
    if top is None or not completion.logprobs:
        return ()
    out = []
    for token_id, alternatives in zip(completion.token_ids, completion.logprobs, strict=True):
        chosen = alternatives[token_id]
        ranked = sorted((lp for lp in alternatives.values() if lp.rank is not None and lp.rank <= top),
                        key=lambda lp: lp.rank)
        out.append(TokenLogprob(
            token=chosen.decoded_token or "",
            logprob=float(chosen.logprob),
            top=tuple((lp.decoded_token or "", float(lp.logprob)) for lp in ranked[:top]),
        ))
    return tuple(out)


def _finish_reason(reason: str | None, request_id: str) -> Literal["stop", "length"]:
    if reason == "stop" or reason == "length":
        return reason
    # "abort": something other than this stream ended it (shutdown, engine-side abort).
    raise EngineUnavailableError(f"request {request_id} was aborted by the engine ({reason})", code="aborted")


def _map_error(exc: Exception) -> Exception:
    """vLLM's exceptions → Diptych's typed errors; anything else is returned unchanged."""
    kind = vllm_error_kind(exc)
    if kind == "engine_dead":
        return EngineUnavailableError("AR engine core died", code="engine_dead")
    if kind == "queue_full":
        return QueueFullError(f"AR engine is full: {exc}")
    if kind == "client" or isinstance(exc, (ValueError, TypeError)):
        # What the renderer rejects: a prompt over max_model_len, an unreadable image.
        return InvalidRequestError(str(exc))
    if kind == "generate_failed":
        cause = exc.__cause__
        # vLLM wraps what input processing rejects (too long, bad image) in EngineGenerateError.
        if isinstance(cause, (ValueError, TypeError)):
            return InvalidRequestError(str(cause))
        return EngineError(f"AR engine failed the request: {cause!r}")
    return exc


def _checkpoint_dtype(model_path: Path) -> str | None:
    config = json.loads((model_path / "config.json").read_text())
    dtype = config.get("dtype") or config.get("torch_dtype") or config.get("text_config", {}).get("dtype")
    return str(dtype) if dtype else None


def _allow_plugin() -> None:
    """Keep Diptych's plugin in an explicit ``VLLM_PLUGINS`` allow-list (children inherit it)."""
    allowed = os.environ.get("VLLM_PLUGINS")
    if allowed is not None and _PLUGIN_NAME not in allowed.split(","):
        os.environ["VLLM_PLUGINS"] = ",".join(p for p in (allowed, _PLUGIN_NAME) if p)
        logger.warning("VLLM_PLUGINS did not allow %r; added it (needed without torchvision)", _PLUGIN_NAME)
