"""The one settings object: built once from CLI flags and ``DIPTYCH_*`` environment variables.

The HTTP side reads it directly; the engine side receives the plain frozen
dataclasses that :meth:`Settings.limits` and :meth:`Settings.engine_config` derive
from it, so that engine code never imports pydantic.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from diptych.types import EngineConfig, Limits


class Settings(BaseSettings):
    """Server settings. Unknown ``DIPTYCH_*`` keys and bad values are errors, not ignored."""

    model_config = SettingsConfigDict(
        env_prefix="DIPTYCH_",
        extra="forbid",
        frozen=True,
        env_ignore_empty=True,
    )

    model: Path | None = Field(
        default=None,
        description="Checkpoint directory. None serves the embedded default model.",
    )
    served_model_name: str | None = Field(
        default=None, description="Name clients use in the `model` field; defaults to the directory name."
    )
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    device: Literal["cpu", "cuda"] = "cpu"
    api_keys: Annotated[tuple[SecretStr, ...], NoDecode] = Field(
        default=(), description="Bearer keys; when any is set every route but /health needs one."
    )
    cache_dir: Path = Field(
        default_factory=lambda: Path.home() / ".cache" / "diptych",
        description="Where vLLM staging directories are written.",
    )
    max_input_pixels: int = Field(default=4096 * 4096, ge=64, description="Largest uploaded image, in pixels.")

    # Limits: a request beyond any of them is a 4xx, never a crash.
    max_image_side: int = Field(default=1024, ge=16)
    max_n: int = Field(default=4, ge=1)
    max_steps: int = Field(default=100, ge=1)
    max_prompt_tokens: int = Field(default=2048, ge=8, description="Prompt tokens, images counted at their size.")
    max_output_tokens: int = Field(default=1024, ge=1)
    max_body_bytes: int = Field(default=20 * 1024 * 1024, ge=1024)
    max_images_per_request: int = Field(default=4, ge=1)
    queue_depth: int = Field(default=64, ge=1, description="Requests admitted but not finished, per engine.")
    request_timeout_s: float = Field(default=300.0, gt=0, description="Per-request deadline (504 past it).")
    shutdown_timeout_s: float = Field(
        default=30.0, ge=0, description="On SIGTERM, how long requests in flight may take to finish (then 503)."
    )

    # Remote image URLs in chat requests. Off unless hosts are listed: fetching a URL that a
    # client names is a server-side request forgery risk.
    remote_image_hosts: Annotated[tuple[str, ...], NoDecode] = Field(
        default=(),
        description="Hosts image URLs may name (exact, or '*.example.com' for subdomains; IP literals allowed). "
        "Empty: remote image URLs are refused.",
    )
    remote_image_max_bytes: int = Field(default=10 * 1024 * 1024, ge=1024, description="Largest remote image.")
    remote_image_timeout_s: float = Field(default=10.0, gt=0, description="Time for one image, redirects included.")
    remote_image_max_redirects: int = Field(default=3, ge=0, le=10)

    # The AR engine (vLLM).
    kv_cache_gib: float = Field(default=1.0, gt=0, description="KV-cache budget for vLLM on CPU.")
    max_model_len: int = Field(default=4096, ge=256)
    max_num_seqs: int = Field(default=16, ge=1)
    ar_startup_timeout_s: float = Field(default=600.0, gt=0)

    log_level: Literal["debug", "info", "warning", "error"] = "info"

    @field_validator("api_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: object) -> object:
        # An environment variable holds keys comma-separated.
        if isinstance(value, str):
            return tuple(k.strip() for k in value.split(",") if k.strip())
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
        prefix = "DIPTYCH_"
        unknown = sorted(
            k for k in os.environ if k.upper().startswith(prefix) and k[len(prefix):].lower() not in type(self).model_fields
        )
        if unknown:
            known = ", ".join(prefix + name.upper() for name in type(self).model_fields)
            raise ValueError(f"unknown environment variable(s) {', '.join(unknown)}; known: {known}")

    def limits(self) -> Limits:
        return Limits(
            max_image_side=self.max_image_side,
            max_n=self.max_n,
            max_steps=self.max_steps,
            max_prompt_tokens=self.max_prompt_tokens,
            max_output_tokens=self.max_output_tokens,
            max_images_per_request=self.max_images_per_request,
            queue_depth=self.queue_depth,
            request_timeout_s=self.request_timeout_s,
        )

    def engine_config(self, model_dir: Path, served_name: str) -> EngineConfig:
        return EngineConfig(
            model_dir=model_dir,
            served_name=served_name,
            device=self.device,
            cache_dir=self.cache_dir,
            kv_cache_gib=self.kv_cache_gib,
            max_model_len=self.max_model_len,
            max_num_seqs=self.max_num_seqs,
            ar_startup_timeout_s=self.ar_startup_timeout_s,
            limits=self.limits(),
        )
