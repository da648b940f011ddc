"""Edit triplets: a source scene, an instruction, and the scene the instruction asks for.

Kinds: ``recolor`` ("make the square green"), ``remove`` ("remove the red circle", only
when another object stays), ``add`` ("add a small blue triangle in the bottom right", only
below three objects; the size is always said, so the target is determined) and ``move``
("move the circle to the top left"). Objects the instruction does not name keep every
attribute and their cell, so their pixels stay identical between source and target.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace

from diptych.bench.shapes.checks import Pattern
from diptych.bench.shapes.language import noun, refer
from diptych.bench.shapes.world import (
    CELL_NAMES,
    COLORS,
    MAX_OBJECTS,
    Scene,
    ShapeObject,
    random_object,
)

EDIT_KINDS: tuple[str, ...] = ("recolor", "remove", "add", "move")


@dataclass(frozen=True)
class EditTriplet:
    source: Scene
    instruction: str
    target: Scene
    kind: str
    cells: tuple[int, ...]  # the cells the instruction changes (a move: from, to); the rest stays


def applicable_kinds(scene: Scene) -> tuple[str, ...]:
    return tuple(kind for kind in EDIT_KINDS
                 if (kind != "remove" or len(scene.objects) > 1) and (kind != "add" or len(scene.objects) < MAX_OBJECTS))


def sample_edit(scene: Scene, rng: random.Random, kind: str | None = None) -> EditTriplet:
    """An edit of ``kind`` (random among those that apply if None); ``ValueError`` if it cannot apply."""
    kinds = applicable_kinds(scene)
    kind = kind or rng.choice(kinds)
    if kind not in EDIT_KINDS:
        raise ValueError(f"edit kind {kind!r} is not one of {EDIT_KINDS}")
    if kind not in kinds:
        raise ValueError(f"edit kind {kind!r} does not apply to a scene of {len(scene.objects)} objects")
    if kind == "add":
        new = random_object(rng, rng.choice(scene.free_cells()))
        pattern = Pattern(shape=new.shape, color=new.color, size=new.size)
        return EditTriplet(scene, f"add {noun(pattern)} in the {CELL_NAMES[new.cell]}",
                           Scene((*scene.objects, new)), kind, (new.cell,))
    obj = rng.choice(scene.objects)
    # Any unique phrase may name the object, the cell too: "remove the object in the top left"
    # is allowed, and an object with an identical twin can only be named that way.
    reference = refer(obj, scene, rng)
    if reference is None:  # cannot happen: ("cell",) is unique, one object per cell
        raise RuntimeError(f"no reference to {obj} in {scene}")
    others = tuple(o for o in scene.objects if o is not obj)
    if kind == "remove":
        return EditTriplet(scene, f"remove {reference}", Scene(others), kind, (obj.cell,))
    if kind == "recolor":
        color = rng.choice([c for c in COLORS if c != obj.color])
        return EditTriplet(scene, f"make {reference} {color}", Scene((*others, replace(obj, color=color))), kind,
                           (obj.cell,))
    cell = rng.choice(scene.free_cells())
    moved: ShapeObject = replace(obj, cell=cell)
    return EditTriplet(scene, f"move {reference} to the {CELL_NAMES[cell]}", Scene((*others, moved)), kind,
                       (obj.cell, cell))
