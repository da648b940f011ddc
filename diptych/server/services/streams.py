"""An engine event stream whose first event has arrived: what every service returns to its route.

Pulling the first event before answering keeps a refusal's status (429, 400, 504): the
engine raises it on the first ``anext``, before any header is sent.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Generic, TypeVar

from diptych.engine.errors import EngineError

E = TypeVar("E")
F = TypeVar("F")


@dataclass
class EngineStream(Generic[E]):
    first: E
    rest: AsyncIterator[E]

    async def events(self) -> AsyncIterator[E]:
        """Every event, the first included; closing the stream is :meth:`aclose`'s job."""
        yield self.first
        async for event in self.rest:
            yield event

    async def until(self, final: type[F]) -> tuple[list[E], F]:
        """The events before the first ``final`` one, and that one; the stream is closed after."""
        before: list[E] = []
        try:
            async for event in self.events():
                if isinstance(event, final):
                    return before, event
                before.append(event)
        finally:
            await self.aclose()
        raise EngineError(f"the engine's stream ended without a {final.__name__}")

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
