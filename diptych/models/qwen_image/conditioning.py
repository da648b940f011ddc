"""Conditioning of a batch of requests: prompt embeddings and source-image latents, cached.

Users resubmit a prompt with a new seed, so embeddings are kept in an LRU cache bounded
in bytes and keyed by what determines them: the prompt text, the template it is put in
(text-to-image or edit) and, for edits, a digest of the source image the VLM sees. A
request's positive and negative prompts are separate entries, so a negative prompt
shared by many requests is encoded once. The source's VAE latents are cached the same way
(on CPU that encode dominates an edit's cost).

Everything not in the cache is encoded in one VLM forward per template (text-only prompts
together, prompts with images together) over all requests admitted at a step.
"""

from __future__ import annotations

import hashlib
import logging
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass

import torch
from PIL import Image

from diptych.models.qwen_image.prompt import PromptEmbedding, PromptEncoder

logger = logging.getLogger(__name__)

DEFAULT_CACHE_BYTES = 256 << 20


def image_digest(image: Image.Image) -> str:
    """Identity of an image's pixels (mode, size and bytes)."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(f"{image.mode}:{image.width}x{image.height}:".encode())
    digest.update(image.tobytes())
    return digest.hexdigest()


class TensorCache:
    """Least-recently-used tensors, evicted once their total size passes ``max_bytes``."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[Hashable, torch.Tensor] = OrderedDict()
        self._bytes = 0
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._items)

    @property
    def bytes(self) -> int:
        return self._bytes

    def get(self, key: Hashable) -> torch.Tensor | None:
        value = self._items.get(key)
        if value is None:
            self.misses += 1
            return None
        self.hits += 1
        self._items.move_to_end(key)
        return value

    def clear(self) -> None:
        self._items.clear()
        self._bytes = 0

    def put(self, key: Hashable, value: torch.Tensor) -> None:
        size = value.numel() * value.element_size()
        if size > self.max_bytes:
            return  # larger than the whole cache: keeping it would evict everything for one entry
        old = self._items.pop(key, None)
        if old is not None:
            self._bytes -= old.numel() * old.element_size()
        self._items[key] = value
        self._bytes += size
        while self._bytes > self.max_bytes:
            _, evicted = self._items.popitem(last=False)
            self._bytes -= evicted.numel() * evicted.element_size()


@dataclass(frozen=True)
class PromptSpec:
    """One prompt to encode: text alone, or an edit instruction with its (prepared) source image."""

    text: str
    image: Image.Image | None = None
    image_key: str | None = None  # image_digest(image), computed once per request

    @property
    def key(self) -> tuple[str, str, str | None]:
        return ("edit" if self.image is not None else "text", self.text, self.image_key)


class Conditioner:
    """Turns the prompt and source-image specs of a batch into tensors, through the cache."""

    def __init__(self, encoder: PromptEncoder, encode_source: Callable[[Image.Image], torch.Tensor],
                 max_bytes: int = DEFAULT_CACHE_BYTES) -> None:
        self._encoder = encoder
        self._encode_source = encode_source
        self.cache = TensorCache(max_bytes)

    def prompts(self, specs: Sequence[PromptSpec]) -> list[PromptEmbedding]:
        """Embeddings of ``specs`` in order; the missing ones in one forward per template."""
        found: dict[Hashable, torch.Tensor] = {}
        missing: dict[Hashable, PromptSpec] = {}
        for spec in specs:
            key = spec.key
            if key in found or key in missing:
                continue
            cached = self.cache.get(key)
            if cached is None:
                missing[key] = spec
            else:
                found[key] = cached
        texts = [spec for spec in missing.values() if spec.image is None]
        edits = [(spec, spec.image) for spec in missing.values() if spec.image is not None]
        encoded = self._encoder.encode_texts([spec.text for spec in texts])
        encoded += self._encoder.encode_with_images([(spec.text, image) for spec, image in edits])
        for spec, embedding in zip([*texts, *(spec for spec, _ in edits)], encoded, strict=True):
            found[spec.key] = embedding.embeds
            self.cache.put(spec.key, embedding.embeds)
        if missing:
            logger.debug("encoded %d prompt(s), %d from cache", len(missing), len(found) - len(missing))
        return [PromptEmbedding(found[spec.key]) for spec in specs]

    def source_latents(self, image: Image.Image, image_key: str) -> torch.Tensor:
        key = ("source-latents", image_key)
        latents = self.cache.get(key)
        if latents is None:
            latents = self._encode_source(image)
            self.cache.put(key, latents)
        return latents
