"""An independent reader of the shapes world's English, for the generator's consistency tests.

It parses noun phrases by vocabulary alone (colour, shape, size words, "in the CELL"),
without using the generator's code, so a test that compares its reading with the
generator's answers can catch a generator that says one thing and means another.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from diptych.bench.shapes.world import (
    CELL_NAMES,
    COLORS,
    SHAPES,
    SIZES,
    Scene,
    ShapeObject,
)

_NUMBERS = {"a": 1, "an": 1, "one": 1, "two": 2, "three": 3}


@dataclass(frozen=True)
class Phrase:
    shape: str | None
    color: str | None
    size: str | None
    cell: int | None
    number: int | None  # "two red circles" → 2; "the …" → None

    def matches(self, obj: ShapeObject) -> bool:
        return all(want is None or want == have for want, have in (
            (self.shape, obj.shape), (self.color, obj.color), (self.size, obj.size), (self.cell, obj.cell)))

    def select(self, scene: Scene) -> list[ShapeObject]:
        return [obj for obj in scene.objects if self.matches(obj)]


def read_phrase(text: str) -> Phrase:
    cell = None
    for index, name in enumerate(CELL_NAMES):
        if text.endswith(f" in the {name}"):
            cell, text = index, text[: -len(f" in the {name}")]
    words = text.split()
    number = _NUMBERS.get(words[0])
    singular = [w[:-1] if w.endswith("s") and w[:-1] in SHAPES + ("object",) else w for w in words]
    unknown = set(singular) - set(COLORS) - set(SHAPES) - set(SIZES) - {"object", "the"} - set(_NUMBERS)
    if unknown:
        raise ValueError(f"unknown words {unknown} in {text!r}")

    def pick(vocabulary: tuple[str, ...]) -> str | None:
        return next((w for w in singular if w in vocabulary), None)

    return Phrase(pick(SHAPES), pick(COLORS), pick(SIZES), cell, number)


def read_cell(text: str) -> int:
    return CELL_NAMES.index(text)


QUESTION = re.compile(r"^(what color is|what shape is|where is|how many|is there) (.+?)(?: are there)?\?$")
INSTRUCTION = re.compile(r"^(make|remove|add|move) (.+?)(?: to the (.+))?$")
