"""The shapes world: scenes of 1–3 flat shapes on a 3×3 grid, sampled from a seed and rendered.

A scene is pure semantics (shape, colour, size, grid cell per object); its picture is a
function of the scene alone, so two equal scenes render to identical pixels and an edit
that leaves an object alone leaves its pixels alone. Objects sit at their cell's centre,
one per cell, and the largest shape leaves a gap of several pixels to its neighbours at
64×64: scenes never overlap or touch, so every picture has exactly one reading.

Splits partition the *scene space*, not the seeds: a scene belongs to the held-out split
when a stable hash of it falls in one bucket out of ``SPLIT_BUCKETS``. Sampling for a split
rejects scenes of the other split, so no held-out scene can ever appear in training data,
however many training examples are streamed (there are only 324 one-object scenes; a
split by seed would leak them all).
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from enum import Enum

from PIL import Image, ImageDraw

SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
# Saturated, far apart in RGB and far from the background, so that anti-aliased edges
# (blends with the background) are never mistaken for another colour's core.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 160, 50),
    "blue": (30, 80, 230),
    "yellow": (240, 210, 20),
    "purple": (140, 50, 190),
    "orange": (250, 130, 10),
}
COLORS: tuple[str, ...] = tuple(PALETTE)
SIZES: tuple[str, ...] = ("small", "large")
BACKGROUND: tuple[int, int, int] = (245, 245, 245)
GRID = 3
# Row-major cell names; also the canonical answers to "where is …?".
CELL_NAMES: tuple[str, ...] = (
    "top left", "top middle", "top right",
    "middle left", "center", "middle right",
    "bottom left", "bottom middle", "bottom right",
)
# Side (circle: diameter) as a fraction of the picture's side. Large leaves ~2.4 px of
# margin inside a 21.3 px cell at 64×64, so neighbours are ≥ 4.7 px apart.
SIZE_FRACTION: dict[str, float] = {"small": 0.15, "large": 0.26}
MAX_OBJECTS = 3
SPLIT_BUCKETS = 10  # one bucket of ten is held out
_SUPERSAMPLE = 4


class Split(str, Enum):
    TRAIN = "train"
    HELDOUT = "heldout"


@dataclass(frozen=True, order=True)
class ShapeObject:
    """One shape; ``cell`` is 0–8, row-major from the top left."""

    cell: int
    shape: str
    color: str
    size: str

    def __post_init__(self) -> None:
        if self.shape not in SHAPES or self.color not in PALETTE or self.size not in SIZES:
            raise ValueError(f"unknown attribute in {self!r}: shapes {SHAPES}, colours {COLORS}, sizes {SIZES}")
        if not 0 <= self.cell < GRID * GRID:
            raise ValueError(f"cell {self.cell} outside the {GRID}×{GRID} grid")

    @property
    def row(self) -> int:
        return self.cell // GRID

    @property
    def col(self) -> int:
        return self.cell % GRID


@dataclass(frozen=True)
class Scene:
    """1–3 objects in distinct cells, kept sorted by cell so equal scenes compare equal."""

    objects: tuple[ShapeObject, ...]

    def __post_init__(self) -> None:
        if not 1 <= len(self.objects) <= MAX_OBJECTS:
            raise ValueError(f"a scene has 1–{MAX_OBJECTS} objects, got {len(self.objects)}")
        cells = [obj.cell for obj in self.objects]
        if len(set(cells)) != len(cells):
            raise ValueError(f"objects share a cell: cells {cells}")
        if list(self.objects) != sorted(self.objects):
            object.__setattr__(self, "objects", tuple(sorted(self.objects)))

    def key(self) -> str:
        """Stable text form, the same in every process (unlike ``hash``)."""
        return ";".join(f"{o.cell}:{o.size}:{o.color}:{o.shape}" for o in self.objects)

    def split(self) -> Split:
        digest = hashlib.blake2b(self.key().encode(), digest_size=8).digest()
        return Split.HELDOUT if int.from_bytes(digest, "big") % SPLIT_BUCKETS == 0 else Split.TRAIN

    def at(self, cell: int) -> ShapeObject | None:
        return next((obj for obj in self.objects if obj.cell == cell), None)

    def free_cells(self) -> tuple[int, ...]:
        taken = {obj.cell for obj in self.objects}
        return tuple(cell for cell in range(GRID * GRID) if cell not in taken)


def random_object(rng: random.Random, cell: int) -> ShapeObject:
    return ShapeObject(cell=cell, shape=rng.choice(SHAPES), color=rng.choice(COLORS), size=rng.choice(SIZES))


def sample_scene(rng: random.Random) -> Scene:
    """1–3 objects (equally likely counts), attributes uniform, distinct cells."""
    count = rng.randint(1, MAX_OBJECTS)
    cells = rng.sample(range(GRID * GRID), count)
    return Scene(tuple(random_object(rng, cell) for cell in cells))


def sample_split_scene(rng: random.Random, split: Split) -> Scene:
    """A scene of ``split``, by rejection (one draw in ten is held out: ~10 draws at most on average)."""
    while True:
        scene = sample_scene(rng)
        if scene.split() is split:
            return scene


def example_rng(kind: str, split: Split, index: int) -> random.Random:
    """The generator of example ``index`` of a stream: any example is reachable without its predecessors."""
    # A str seed is hashed with SHA-512 by random.seed: stable across processes and versions.
    return random.Random(f"diptych-shapes/{kind}/{split.value}/{index}")


def cell_center(cell: int, size: float) -> tuple[float, float]:
    step = size / GRID
    return ((cell % GRID + 0.5) * step, (cell // GRID + 0.5) * step)


def render(scene: Scene, size: int = 64, antialias: bool = True) -> Image.Image:
    """The scene as an RGB picture of ``size``×``size``; anti-aliased by 4× supersampling."""
    if size < 32:
        raise ValueError(f"render size {size} is below 32: small shapes would vanish")
    scale = _SUPERSAMPLE if antialias else 1
    canvas = Image.new("RGB", (size * scale, size * scale), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    for obj in scene.objects:
        _draw(draw, obj, size * scale)
    return canvas.resize((size, size), Image.Resampling.BOX) if scale > 1 else canvas


def _draw(draw: ImageDraw.ImageDraw, obj: ShapeObject, size: int) -> None:
    cx, cy = cell_center(obj.cell, size)
    half = SIZE_FRACTION[obj.size] * size / 2
    fill = PALETTE[obj.color]
    if obj.shape == "circle":
        draw.ellipse((cx - half, cy - half, cx + half, cy + half), fill=fill)
    elif obj.shape == "square":
        draw.rectangle((cx - half, cy - half, cx + half, cy + half), fill=fill)
    else:  # an upright isosceles triangle, as wide as it is tall
        draw.polygon([(cx, cy - half), (cx + half, cy + half), (cx - half, cy + half)], fill=fill)
