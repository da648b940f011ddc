"""What tests of the AR engine share: a small engine configuration, collecting a stream, marked test pictures."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from PIL import Image

from diptych.engine.ar_engine import ARTextDelta
from diptych.types import ChatFinished, EngineConfig, Limits


def ar_config(model_dir: Path, max_model_len: int = 1024) -> EngineConfig:
    """A configuration for a tiny model: a small KV cache, up to 8 sequences, generous start-up time."""
    limits = Limits(
        max_image_side=512,
        max_n=1,
        max_steps=10,
        max_prompt_tokens=512,
        max_output_tokens=512,
        max_images_per_request=2,
        queue_depth=16,
        request_timeout_s=60.0,
    )
    return EngineConfig(
        model_dir=model_dir,
        served_name="tiny",
        device="cpu",
        dtype="auto",
        cache_dir=model_dir,
        kv_cache_gib=0.125,
        max_model_len=max_model_len,
        max_num_seqs=8,
        ar_startup_timeout_s=600.0,
        limits=limits,
    )


def marked_image(colour: tuple[int, int, int], size: tuple[int, int] = (64, 64)) -> Image.Image:
    """A flat picture with a rectangle of another colour in its top-left quarter."""
    image = Image.new("RGB", size, colour)
    image.paste((255 - colour[0], colour[1], 255 - colour[2]), (8, 8, size[0] // 2, size[1] // 2))
    return image


async def collect(stream: AsyncIterator[Any]) -> tuple[list[int], str, ChatFinished]:
    """Token ids, text and the final event of an AR stream; nothing may follow the final event."""
    tokens: list[int] = []
    text = ""
    finished: ChatFinished | None = None
    async for event in stream:
        if isinstance(event, ARTextDelta):
            assert finished is None
            tokens.extend(event.token_ids)
            text += event.text
        else:
            assert isinstance(event, ChatFinished)
            finished = event
    assert finished is not None
    return tokens, text, finished
