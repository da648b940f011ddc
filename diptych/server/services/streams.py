"""An engine event stream whose first event has arrived: what every service returns to its route.

Pulling the first event before answering keeps a refusal's status (429, 400, 504): the
engine raises it on the first ``anext``, before any header is sent.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Generic, TypeVar

E = TypeVar("E")


@dataclass
class EngineStream(Generic[E]):
    first: E
    rest: AsyncIterator[E]

    async def events(self) -> AsyncIterator[E]:
        """Every event, the first included; closing the stream is :meth:`aclose`'s job."""
        yield self.first
        async for event in self.rest:
            yield event

    async def aclose(self) -> None:
        """Closing early aborts the request in the engine."""
        await self.rest.aclose()  # type: ignore[attr-defined]


async def open_stream(events: AsyncIterator[E]) -> EngineStream[E]:
    try:
        first = await anext(events)
    except BaseException:
        await events.aclose()  # type: ignore[attr-defined]
        raise
    return EngineStream(first, events)
