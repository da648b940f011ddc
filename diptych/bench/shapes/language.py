"""The shapes world's English: noun phrases, referring expressions, captions.

A small fixed grammar, so that a micro model can learn it and a checker can read it:

    noun phrase   [a|an|two|three] [size] [colour] shape[s] [in the CELL]
    caption       NP | NP and NP | NP to the left of / to the right of / above / below NP
                  | NP, NP and NP (every object fully described)

Every caption carries the requirements it claims (``checks``), built from the same
attributes as its text, so a caption is by construction true of the scene it describes.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace

from diptych.bench.shapes.checks import (
    Count,
    Pattern,
    Relation,
    Requirement,
    Total,
    relation_holds,
)
from diptych.bench.shapes.world import CELL_NAMES, Scene, ShapeObject

NUMBER_WORDS: tuple[str, ...] = ("zero", "one", "two", "three")
# Caption kinds, after GenEval's tasks; "layout" pins one object to a cell, "full" describes
# every object completely (the one caption that determines the whole picture).
CAPTION_KINDS: tuple[str, ...] = ("object", "color", "count", "two_objects", "color_attr", "position", "layout",
                                  "full")


@dataclass(frozen=True)
class Caption:
    text: str
    kind: str
    requirements: tuple[Requirement, ...]


def article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def cell_phrase(cell: int) -> str:
    return f"in the {CELL_NAMES[cell]}"


def noun(pattern: Pattern, count: int = 1, head: str | None = None) -> str:
    """``Pattern(shape="circle", color="red")`` → "a red circle"; ``count=2`` → "two red circles".

    ``head`` replaces a missing shape ("object", "shape"); the cell, if any, trails.
    """
    base = pattern.shape or head or "object"
    words = [w for w in (pattern.size, pattern.color) if w is not None]
    words.append(base if count == 1 else base + "s")
    determiner = article(words[0]) if count == 1 else NUMBER_WORDS[count]
    text = f"{determiner} {' '.join(words)}"
    return f"{text} {cell_phrase(pattern.cell)}" if pattern.cell is not None else text


def full_pattern(obj: ShapeObject) -> Pattern:
    return Pattern(shape=obj.shape, color=obj.color, size=obj.size, cell=obj.cell)


# Attribute sets a referring expression may use, shortest first.
_REFERENCES: tuple[tuple[str, ...], ...] = (
    ("shape",), ("color",), ("color", "shape"), ("size", "shape"), ("size", "color"), ("size", "color", "shape"),
    ("cell",), ("shape", "cell"),
)


def refer(obj: ShapeObject, scene: Scene, rng: random.Random, avoid: frozenset[str] = frozenset()) -> str | None:
    """A phrase picking out ``obj`` alone in ``scene`` ("the red circle", "the shape in the top left").

    Uses none of the attributes in ``avoid`` (a question about colour must not name it);
    None when no such phrase is unique. Among unique phrases, the shortest ones are preferred
    three times in four, so that models see both terse and wordy references.
    """
    unique = []
    for attributes in _REFERENCES:
        if avoid.intersection(attributes):
            continue
        pattern = Pattern(**{name: getattr(obj, name) for name in attributes})
        if pattern.count(scene.objects) == 1:
            unique.append(pattern)
    if not unique:
        return None
    chosen = unique[0] if rng.random() < 0.75 else rng.choice(unique)
    return "the " + noun(chosen).split(" ", 1)[1]


def sample_caption(scene: Scene, rng: random.Random, kinds: tuple[str, ...] = CAPTION_KINDS) -> Caption:
    """A caption of a kind drawn from ``kinds`` that applies to ``scene`` (object, color, layout, full always do)."""
    order = list(kinds)
    rng.shuffle(order)
    for kind in order:
        caption = caption_of_kind(scene, kind, rng)
        if caption is not None:
            return caption
    raise ValueError(f"no caption kind of {kinds} applies to {scene}")


def named_scene(scene: Scene, caption: Caption) -> Scene:
    """``scene`` cut down to the objects ``caption`` names: the picture a drawer of the caption would make.

    "a triangle" keeps one triangle, "two circles" both circles, "a red circle above a blue
    square" the pair the relation holds for, a full caption every object. The caption stays
    true of the result.
    """
    kept: set[ShapeObject] = set()
    for requirement in caption.requirements:
        if isinstance(requirement, Count):
            matching = requirement.pattern.select(scene.objects)
            kept.update(matching[:requirement.n] if requirement.at_least else matching)
        elif isinstance(requirement, Relation):
            pair = requirement.witness(scene.objects)
            if pair is None:
                raise ValueError(f"{caption.text!r} is not true of {scene}")
            kept.update(pair)
        else:  # Total: every object is named
            kept.update(scene.objects)
    return Scene(tuple(kept))


# Where a drawing puts the objects its caption names without placing them, in order of
# mention: one in the centre, two or three side by side on the middle row; a relation's
# pair on the middle row ("to the left of") or column ("above"). A caption that leaves the
# layout open has many true pictures, and the transformer must agree with itself, token by
# token, on which object goes where. Run r2 (docs/architecture.md) drew every named shape at
# its cell, and nothing else, for 56 of 60 held-out full captions of two or three objects,
# but only 5 of 15 "a square and a triangle" prompts right; trained on drawings laid out
# here (run p0), it drew 92% of ShapesBench's prompts right, against r2's 46%.
DEFAULT_CELLS: dict[int, tuple[int, ...]] = {1: (4,), 2: (3, 5), 3: (3, 4, 5)}
RELATION_CELLS: dict[str, tuple[int, int]] = {"left of": (3, 5), "right of": (5, 3), "above": (1, 7), "below": (7, 1)}


def drawn_scene(scene: Scene, caption: Caption) -> Scene:
    """The picture a drawer of ``caption`` makes from ``scene``: the objects it names
    (``named_scene``), at the cells the caption gives them, else at the default layout.

    "a red circle to the left of a blue square" of a scene with the pair on any rows and
    columns is drawn with the circle in the middle left and the square in the middle right;
    "a circle in the top left" keeps its cell, as does a full caption. Sizes and colours the
    caption leaves open stay the scene's, so drawings of one caption still vary.
    """
    named = named_scene(scene, caption)
    if any(isinstance(r, Total) or (isinstance(r, Count) and r.pattern.cell is not None)
           for r in caption.requirements):
        return named
    relation = next((r for r in caption.requirements if isinstance(r, Relation)), None)
    objects: tuple[ShapeObject, ...]
    if relation is not None:
        pair = relation.witness(named.objects)
        assert pair is not None  # named_scene keeps the witness
        objects, cells = pair, RELATION_CELLS[relation.relation]
    else:
        mentioned: list[ShapeObject] = []
        for requirement in caption.requirements:
            assert isinstance(requirement, Count)
            mentioned += [obj for obj in requirement.pattern.select(named.objects) if obj not in mentioned]
        objects, cells = tuple(mentioned), DEFAULT_CELLS[len(mentioned)]
    return Scene(tuple(replace(obj, cell=cell) for obj, cell in zip(objects, cells, strict=True)))


def caption_of_kind(scene: Scene, kind: str, rng: random.Random) -> Caption | None:
    """A random caption of ``kind`` true of ``scene``, or None when the kind does not apply (no pair, no group)."""
    if kind not in _BUILDERS:
        raise ValueError(f"caption kind {kind!r} is not one of {CAPTION_KINDS}")
    return _BUILDERS[kind](scene, rng)


def _object(scene: Scene, rng: random.Random) -> Caption:
    pattern = Pattern(shape=rng.choice(scene.objects).shape)
    return Caption(noun(pattern), "object", (Count(pattern, 1, at_least=True),))


def _color(scene: Scene, rng: random.Random) -> Caption:
    obj = rng.choice(scene.objects)
    pattern = Pattern(shape=obj.shape, color=obj.color)
    return Caption(noun(pattern), "color", (Count(pattern, 1, at_least=True),))


def _count(scene: Scene, rng: random.Random) -> Caption | None:
    # Groups of two or three alike: by shape ("two circles") or by colour and shape.
    groups = {}
    for obj in scene.objects:
        for pattern in (Pattern(shape=obj.shape), Pattern(shape=obj.shape, color=obj.color)):
            if (n := pattern.count(scene.objects)) >= 2:
                groups[pattern] = n
    if not groups:
        return None
    pattern = rng.choice(sorted(groups, key=noun))
    return Caption(noun(pattern, groups[pattern]), "count", (Count(pattern, groups[pattern]),))


def _pair(scene: Scene, rng: random.Random, distinct: str) -> tuple[ShapeObject, ShapeObject] | None:
    pairs = [(a, b) for a in scene.objects for b in scene.objects
             if a is not b and (a.shape != b.shape if distinct == "shape" else (a.shape, a.color) != (b.shape, b.color))]
    return rng.choice(pairs) if pairs else None


def _two_objects(scene: Scene, rng: random.Random) -> Caption | None:
    if (pair := _pair(scene, rng, "shape")) is None:
        return None
    patterns = tuple(Pattern(shape=obj.shape) for obj in pair)
    return Caption(" and ".join(map(noun, patterns)), "two_objects", tuple(Count(p, 1, at_least=True) for p in patterns))


def _color_attr(scene: Scene, rng: random.Random) -> Caption | None:
    if (pair := _pair(scene, rng, "shape and color")) is None:
        return None
    patterns = tuple(Pattern(shape=obj.shape, color=obj.color) for obj in pair)
    return Caption(" and ".join(map(noun, patterns)), "color_attr", tuple(Count(p, 1, at_least=True) for p in patterns))


def _position(scene: Scene, rng: random.Random) -> Caption | None:
    if (pair := _pair(scene, rng, "shape and color")) is None:
        return None
    a, b = pair
    # A horizontal relation when the columns differ, as in "to the left of", else vertical.
    relation = next(r for r in ("left of", "right of", "above", "below") if relation_holds(a.cell, r, b.cell))
    pa, pb = Pattern(shape=a.shape, color=a.color), Pattern(shape=b.shape, color=b.color)
    words = {"left of": "to the left of", "right of": "to the right of", "above": "above", "below": "below"}
    return Caption(f"{noun(pa)} {words[relation]} {noun(pb)}", "position", (Relation(pa, relation, pb),))


def _layout(scene: Scene, rng: random.Random) -> Caption:
    pattern = full_pattern(rng.choice(scene.objects))
    return Caption(noun(pattern), "layout", (Count(pattern, 1, at_least=True),))


def _full(scene: Scene, rng: random.Random) -> Caption:
    del rng  # one text per scene: objects in reading order
    patterns = [full_pattern(obj) for obj in scene.objects]
    phrases = [noun(p) for p in patterns]
    text = phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]
    return Caption(text, "full", (*(Count(p, 1) for p in patterns), Total(len(patterns))))


_BUILDERS = {
    "object": _object, "color": _color, "count": _count, "two_objects": _two_objects, "color_attr": _color_attr,
    "position": _position, "layout": _layout, "full": _full,
}
