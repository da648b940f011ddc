"""Questions about a scene with canonical short answers.

Kinds and answers: ``color`` (a colour word), ``shape`` (circle/square/triangle), ``count``
(a digit, 0–3), ``position`` (a cell name such as "top left" or "center") and ``exist``
(yes/no, balanced). A question only names an object by a phrase that picks it out alone
(``language.refer``), and never by the attribute it asks about.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from diptych.bench.shapes.checks import Described, Pattern
from diptych.bench.shapes.language import noun, refer
from diptych.bench.shapes.world import CELL_NAMES, COLORS, GRID, SHAPES, SIZES, Scene

QUESTION_KINDS: tuple[str, ...] = ("color", "shape", "count", "position", "exist")


@dataclass(frozen=True)
class VQAPair:
    question: str
    answer: str
    kind: str
    # Cells of the objects the question is about: the one it names, or every one it counts
    # or asks for (none, when the answer is 0 or "no").
    cells: frozenset[int]


def sample_question(scene: Scene, rng: random.Random, kind: str | None = None) -> VQAPair:
    """A question of ``kind`` (random if None) about ``scene``.

    Every kind applies to every scene but one case: ``position`` when every object has an
    identical twin, so none can be named without its cell. Then ``ValueError``;
    ``data.vqa_example`` draws another scene.
    """
    kind = kind or rng.choice(QUESTION_KINDS)
    if kind not in _ASKERS:
        raise ValueError(f"question kind {kind!r} is not one of {QUESTION_KINDS}")
    pair = _ASKERS[kind](scene, rng)
    if pair is None:
        raise ValueError(f"no {kind} question identifies an object of {scene}")
    return pair


def _about_object(scene: Scene, rng: random.Random, attribute: str, template: str,
                  answer: Callable[[int], str]) -> VQAPair | None:
    for index in rng.sample(range(len(scene.objects)), len(scene.objects)):
        obj = scene.objects[index]
        reference = refer(obj, scene, rng, avoid=frozenset({attribute}))
        if reference is not None:
            return VQAPair(template.format(ref=reference), answer(index), attribute if attribute != "cell" else "position",
                           frozenset({obj.cell}))
    return None


def _color(scene: Scene, rng: random.Random) -> VQAPair | None:
    return _about_object(scene, rng, "color", "what color is {ref}?", lambda i: scene.objects[i].color)


def _shape(scene: Scene, rng: random.Random) -> VQAPair | None:
    return _about_object(scene, rng, "shape", "what shape is {ref}?", lambda i: scene.objects[i].shape)


def _position(scene: Scene, rng: random.Random) -> VQAPair | None:
    return _about_object(scene, rng, "cell", "where is {ref}?", lambda i: CELL_NAMES[scene.objects[i].cell])


def _count(scene: Scene, rng: random.Random) -> VQAPair:
    # Half the time about attributes present in the scene (answers 1–3), else any (often 0).
    obj = rng.choice(scene.objects)
    shape, color = (obj.shape, obj.color) if rng.random() < 0.5 else (rng.choice(SHAPES), rng.choice(COLORS))
    pattern = rng.choice([Pattern(), Pattern(shape=shape), Pattern(color=color), Pattern(shape=shape, color=color)])
    plural = noun(pattern, count=2).split(" ", 1)[1]  # "two red circles" → "red circles"
    counted = pattern.select(scene.objects)
    return VQAPair(f"how many {plural} are there?", str(len(counted)), "count", _cells(counted))


def _exist(scene: Scene, rng: random.Random) -> VQAPair:
    wanted = rng.random() < 0.5  # balanced yes/no, so "yes" alone scores 50%
    for _ in range(100):
        obj = rng.choice(scene.objects)
        if wanted:
            attributes = rng.choice([("shape",), ("color", "shape"), ("size", "color", "shape"), ("shape", "cell")])
            pattern = Pattern(**{name: getattr(obj, name) for name in attributes})
        else:
            pattern = rng.choice([
                Pattern(shape=rng.choice(SHAPES)),
                Pattern(shape=rng.choice(SHAPES), color=rng.choice(COLORS)),
                Pattern(shape=rng.choice(SHAPES), color=rng.choice(COLORS), size=rng.choice(SIZES)),
                Pattern(shape=rng.choice(SHAPES), cell=rng.randrange(GRID * GRID)),
            ])
        found = pattern.select(scene.objects)
        if bool(found) == wanted:
            return VQAPair(f"is there {noun(pattern)}?", "yes" if wanted else "no", "exist", _cells(found))
    # Only reached for "no" when every guess exists, which needs the scene to hold every shape.
    pattern = Pattern(shape=scene.objects[0].shape)
    return VQAPair(f"is there {noun(pattern)}?", "yes", "exist", _cells(pattern.select(scene.objects)))


def _cells(objects: Sequence[Described]) -> frozenset[int]:
    return frozenset(obj.cell for obj in objects)


_ASKERS: dict[str, Callable[[Scene, random.Random], VQAPair | None]] = {
    "color": _color, "shape": _shape, "count": _count, "position": _position, "exist": _exist,
}
