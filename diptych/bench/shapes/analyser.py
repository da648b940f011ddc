"""Read a shapes-world picture back into objects: the judge of ShapesBench.

Deterministic and model-free, so that a score measures the model and nothing else:

1. the picture is brought to 64×64 (box filter) so every threshold is in one unit;
2. the background is the median of the outer ring of pixels (objects never reach it);
   foreground is whatever is far enough from it in RGB;
3. 8-connected components of the foreground, specks below ``MIN_AREA`` pixels dropped
   (noise of generated pictures);
4. colour: the palette colour nearest to the median of the component's nearly pure
   pixels, so anti-aliased edges (blends with the background) do not vote;
5. shape from moments of the coverage (a pixel's distance from the background over the
   object's own): a triangle's mass is skewed downwards; a square's x and y spreads are
   independent, a disc's are not;
6. size by covered area, cell by the centroid.

It never refuses a picture: whatever it finds is reported, and the caller decides
whether that is a valid scene.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np
from PIL import Image

from diptych.bench.shapes.world import GRID, PALETTE, SIZE_FRACTION, Scene, ShapeObject

ANALYSIS_SIZE = 64
# Distance from the background (RGB, 0–441) above which a pixel is foreground: about a
# third of the way to the nearest palette colour, so a pixel covered ≥ ~⅓ counts.
FOREGROUND_DISTANCE = 60.0
MIN_AREA = 12  # a small triangle has ~45 px at 64×64
# Small and large differ 3× in area; split at the geometric mean, per shape (a circle
# covers π/4 of its square, a triangle ½).
_AREA_FACTOR = {"square": 1.0, "circle": np.pi / 4, "triangle": 0.5}
_SIZE_SPLIT_AREA = {
    shape: factor * SIZE_FRACTION["small"] * SIZE_FRACTION["large"] * ANALYSIS_SIZE**2
    for shape, factor in _AREA_FACTOR.items()
}
_PALETTE_NAMES = tuple(PALETTE)
_PALETTE_RGB = np.array([PALETTE[name] for name in _PALETTE_NAMES], dtype=np.float32)


@dataclass(frozen=True)
class DetectedObject:
    shape: str
    color: str
    size: str
    cell: int
    centroid: tuple[float, float]  # (x, y) in 64×64 pixels
    area: int  # covered pixels at 64×64 (edge pixels count fractionally)
    skew: float  # vertical skewness of the mass: ≈ −0.57 for a triangle, 0 for the others
    joint: float  # E[dx²dy²] ÷ (var_x var_y): 1 for a square, ⅔ for a circle

    @property
    def row(self) -> int:
        return self.cell // GRID

    @property
    def col(self) -> int:
        return self.cell % GRID

    def as_object(self) -> ShapeObject:
        return ShapeObject(cell=self.cell, shape=self.shape, color=self.color, size=self.size)


@dataclass(frozen=True)
class Analysis:
    objects: tuple[DetectedObject, ...]  # sorted by cell, then position

    def scene(self) -> Scene | None:
        """The detected scene, or None when it is not a valid one (no object, shared cells, too many)."""
        try:
            return Scene(tuple(obj.as_object() for obj in self.objects))
        except ValueError:
            return None


def analyse(image: Image.Image) -> Analysis:
    pixels = _normalise(image)
    background = np.median(np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]]), axis=0)
    distance = np.linalg.norm(pixels - background, axis=2)
    found = [_describe(pixels, distance, component) for component in _components(distance > FOREGROUND_DISTANCE)]
    return Analysis(tuple(sorted(found, key=lambda obj: (obj.cell, obj.centroid[1], obj.centroid[0]))))


def _normalise(image: Image.Image) -> np.ndarray:
    rgb = image.convert("RGB")
    if rgb.size != (ANALYSIS_SIZE, ANALYSIS_SIZE):
        rgb = rgb.resize((ANALYSIS_SIZE, ANALYSIS_SIZE), Image.Resampling.BOX)
    return np.asarray(rgb, dtype=np.float32)


def _components(mask: np.ndarray) -> list[np.ndarray]:
    """8-connected components of ``mask`` of at least ``MIN_AREA`` pixels, as (N, 2) arrays of (y, x)."""
    height, width = mask.shape
    seen = np.zeros_like(mask, dtype=bool)
    found: list[np.ndarray] = []
    for start_y, start_x in zip(*np.nonzero(mask), strict=True):
        if seen[start_y, start_x]:
            continue
        seen[start_y, start_x] = True
        queue, members = deque([(int(start_y), int(start_x))]), []
        while queue:
            y, x = queue.popleft()
            members.append((y, x))
            for ny in (y - 1, y, y + 1):
                for nx in (x - 1, x, x + 1):
                    if 0 <= ny < height and 0 <= nx < width and mask[ny, nx] and not seen[ny, nx]:
                        seen[ny, nx] = True
                        queue.append((ny, nx))
        if len(members) >= MIN_AREA:
            found.append(np.array(members))
    return found


def _describe(pixels: np.ndarray, distance: np.ndarray, component: np.ndarray) -> DetectedObject:
    ys, xs = component[:, 0].astype(np.float64), component[:, 1].astype(np.float64)
    strength = distance[component[:, 0], component[:, 1]]
    # Coverage: 1 inside, fractional on anti-aliased edges. Geometry comes from moments of
    # coverage, not from a thresholded mask: an edge pixel near any threshold would flip
    # in or out with noise and change a small shape's outline by a whole row.
    full = float(np.percentile(strength, 75))
    coverage = np.clip(strength / full, 0.0, 1.0)
    area = float(coverage.sum())
    cx, cy = float((coverage * xs).sum() / area), float((coverage * ys).sum() / area)
    dx, dy = xs - cx, ys - cy
    var_x, var_y = float((coverage * dx**2).sum() / area), float((coverage * dy**2).sum() / area)
    skew_y = float((coverage * dy**3).sum() / area) / max(var_y, 1e-6) ** 1.5
    # E[dx²·dy²] ÷ (var_x·var_y): 1 when x and y are independent, as in a square (blur
    # keeps it so), 2/3 for a disc, whose x range shrinks as |y| grows.
    joint = float((coverage * dx**2 * dy**2).sum() / area) / max(var_x * var_y, 1e-6)
    shape = _shape(skew_y, joint)
    # Colour from nearly pure pixels: edge blends with the background do not vote.
    core = component[strength >= 0.8 * full]
    median = np.median(pixels[core[:, 0], core[:, 1]], axis=0)
    color = _PALETTE_NAMES[int(np.argmin(np.linalg.norm(_PALETTE_RGB - median, axis=1)))]
    step = ANALYSIS_SIZE / GRID
    cell = min(int(cy // step), GRID - 1) * GRID + min(int(cx // step), GRID - 1)
    return DetectedObject(
        shape=shape, color=color, size="large" if area > _SIZE_SPLIT_AREA[shape] else "small", cell=cell,
        centroid=(cx, cy), area=round(area), skew=skew_y, joint=joint,
    )


def _shape(skew_y: float, joint: float) -> str:
    # An upright triangle's mass grows downwards: vertical skewness −0.57, where circles and
    # squares are symmetric (0). Then squares ≈ 1 and circles ≈ ⅔ in ``joint``. The cuts
    # sit mid-way; tests/bench/shapes/test_analyser.py checks the margins on renders.
    if skew_y < -0.28:
        return "triangle"
    return "square" if joint > 0.83 else "circle"
