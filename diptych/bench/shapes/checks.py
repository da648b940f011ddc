"""What a caption claims about a picture, as checks over objects (GenEval's way of judging).

A caption is true of a picture when every one of its requirements holds over the objects
found in it. The same requirements are checked against a scene's own objects (the
generator's consistency tests) and against the analyser's reading of a generated picture
(ShapesBench), so both only need objects with ``shape``, ``color``, ``size``, ``cell``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from diptych.bench.shapes.world import GRID


class Described(Protocol):
    """An object with the four attributes of the world: a ShapeObject or a DetectedObject."""

    @property
    def shape(self) -> str: ...
    @property
    def color(self) -> str: ...
    @property
    def size(self) -> str: ...
    @property
    def cell(self) -> int: ...


@dataclass(frozen=True)
class Pattern:
    """Objects with these attributes; None matches anything."""

    shape: str | None = None
    color: str | None = None
    size: str | None = None
    cell: int | None = None

    def matches(self, obj: Described) -> bool:
        return all(
            want is None or want == have
            for want, have in ((self.shape, obj.shape), (self.color, obj.color), (self.size, obj.size),
                               (self.cell, obj.cell))
        )

    def select(self, objects: Sequence[Described]) -> list[Described]:
        """The objects that match, in order."""
        return [obj for obj in objects if self.matches(obj)]

    def count(self, objects: Sequence[Described]) -> int:
        return len(self.select(objects))


@dataclass(frozen=True)
class Count:
    """Exactly ``n`` objects match (``at_least``: ``n`` or more, which is how "a red circle" reads)."""

    pattern: Pattern
    n: int
    at_least: bool = False

    @property
    def kind(self) -> str:
        """What the check is about, for per-check accuracy: count, else colour, else presence."""
        if not self.at_least or self.n != 1:
            return "count"
        return "color" if self.pattern.color is not None else "object"

    def holds(self, objects: Sequence[Described]) -> bool:
        found = self.pattern.count(objects)
        return found >= self.n if self.at_least else found == self.n


RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below")


@dataclass(frozen=True)
class Relation:
    """Some object matching ``a`` is in a column left of (row above, …) some other object matching ``b``."""

    a: Pattern
    relation: str
    b: Pattern

    def __post_init__(self) -> None:
        if self.relation not in RELATIONS:
            raise ValueError(f"relation {self.relation!r} is not one of {RELATIONS}")

    @property
    def kind(self) -> str:
        return "position"

    def witness(self, objects: Sequence[Described]) -> tuple[Described, Described] | None:
        """The first pair (a, b) of ``objects`` the relation holds for, or None."""
        return next(
            ((first, second) for first in objects for second in objects
             if first is not second and self.a.matches(first) and self.b.matches(second)
             and relation_holds(first.cell, self.relation, second.cell)),
            None,
        )

    def holds(self, objects: Sequence[Described]) -> bool:
        return self.witness(objects) is not None


@dataclass(frozen=True)
class Total:
    """Exactly ``n`` objects in the picture."""

    n: int

    @property
    def kind(self) -> str:
        return "count"

    def holds(self, objects: Sequence[Described]) -> bool:
        return len(objects) == self.n


Requirement = Count | Relation | Total


def relation_holds(cell_a: int, relation: str, cell_b: int) -> bool:
    (row_a, col_a), (row_b, col_b) = divmod(cell_a, GRID), divmod(cell_b, GRID)
    return {
        "left of": col_a < col_b, "right of": col_a > col_b, "above": row_a < row_b, "below": row_a > row_b,
    }[relation]
