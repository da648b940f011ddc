"""Prefix chunks kept across requests: least recently used first out, within a byte budget.

An entry maps a key (what determines the chunk's tokens: template text and reference
digests) to the chain of chunks that ends with it, so a hit on the last chunk of a branch
brings the chunks it attends with it. Chunks are shared, so the budget counts each chunk
once however many entries hold it; a chunk that active requests still hold outlives its
eviction, and is freed with them (the request's own price covers it).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable

from diptych.models.qwen_image_21.packed import PrefixKV
from diptych.types import CacheStats

Chain = tuple[PrefixKV, ...]


class PrefixCache:
    def __init__(self, budget_bytes: int) -> None:
        if budget_bytes < 0:
            raise ValueError(f"the prefix cache budget must be >= 0 bytes, got {budget_bytes}")
        self.budget_bytes = budget_bytes
        self._entries: OrderedDict[Hashable, Chain] = OrderedDict()
        self._hits = self._misses = 0

    def get(self, key: Hashable) -> Chain | None:
        chain = self._entries.get(key)
        if chain is None:
            self._misses += 1
            return None
        self._hits += 1
        self._entries.move_to_end(key)
        return chain

    def put(self, key: Hashable, chain: Chain) -> None:
        """Keep ``chain`` under ``key`` (most recent), then evict down to the budget."""
        self._entries[key] = chain
        self._entries.move_to_end(key)
        self.trim()

    def trim(self) -> None:
        """Evict the least recently used entries until the chunks held fit the budget.

        Called after chunks grow (a prefill stores their keys and values)."""
        while self._entries and self.nbytes() > self.budget_bytes:
            self._entries.popitem(last=False)

    def nbytes(self) -> int:
        chunks = {id(chunk): chunk for chain in self._entries.values() for chunk in chain}
        return sum(chunk.nbytes for chunk in chunks.values())

    def stats(self) -> CacheStats:
        return CacheStats(self._hits, self._misses, self.nbytes(), len(self._entries))
