"""Training and evaluation examples of the shapes world, addressable by (split, index).

Example ``index`` of a stream is a pure function of (kind, split, index): a trainer can
stream from any offset, shard by index across workers, and regenerate any example for
inspection, without storing a dataset. Each example costs one or two 64×64 renders (well
under a millisecond of CPU each).

Held-out examples use only held-out scenes (``world.Scene.split``), and an edit belongs to
a split only when its source *and* target scenes do, so nothing a model is tested on has
been shown to it in training, as input or as output.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

from PIL import Image

from diptych.bench.shapes.edits import EditTriplet, applicable_kinds, sample_edit
from diptych.bench.shapes.language import (
    CAPTION_KINDS,
    Caption,
    caption_of_kind,
    drawn_scene,
    sample_caption,
)
from diptych.bench.shapes.vqa import VQAPair, sample_question
from diptych.bench.shapes.world import (
    Scene,
    Split,
    example_rng,
    render,
    sample_split_scene,
)

_MAX_TRIES = 1000  # rejection loops below succeed in a handful of draws; this only bounds a bug


@dataclass(frozen=True)
class CaptionExample:
    scene: Scene
    image: Image.Image
    caption: Caption


@dataclass(frozen=True)
class VQAExample:
    scene: Scene
    image: Image.Image
    pair: VQAPair


@dataclass(frozen=True)
class EditExample:
    triplet: EditTriplet
    source_image: Image.Image
    target_image: Image.Image


def caption_example(split: Split, index: int, size: int = 64, kind: str | None = None) -> CaptionExample:
    """(image, caption); ``kind`` fixes the caption kind (scenes it does not apply to are redrawn)."""
    rng = example_rng("caption", split, index)
    for _ in range(_MAX_TRIES):
        scene = sample_split_scene(rng, split)
        caption = sample_caption(scene, rng) if kind is None else caption_of_kind(scene, kind, rng)
        if caption is not None:
            return CaptionExample(scene, render(scene, size), caption)
    raise RuntimeError(f"no {kind} caption in {_MAX_TRIES} scenes (kinds: {CAPTION_KINDS})")


def drawing_example(split: Split, index: int, size: int = 64) -> CaptionExample:
    """(caption, the picture of just what it names): what text-to-image learns to draw.

    A caption of a scene names some of its objects ("a triangle" of a scene of three); the
    drawing keeps only those, at the cells the caption names or else at a default layout
    (``language.drawn_scene``), so a prompt determines what is drawn and where, and nothing
    unasked for is. Caption kinds are equally likely, as in ShapesBench (a scene a kind
    does not apply to, or a drawing of the other split, is redrawn).
    """
    rng = example_rng("drawing", split, index)
    kind = rng.choice(CAPTION_KINDS)
    for _ in range(_MAX_TRIES):
        scene = sample_split_scene(rng, split)
        caption = caption_of_kind(scene, kind, rng)
        if caption is not None and (drawn := drawn_scene(scene, caption)).split() is split:
            return CaptionExample(drawn, render(drawn, size), caption)
    raise RuntimeError(f"no {split.value} drawing in {_MAX_TRIES} scenes")


def vqa_example(split: Split, index: int, size: int = 64, kind: str | None = None) -> VQAExample:
    """(image, question, answer); ``kind`` fixes the question kind."""
    rng = example_rng("vqa", split, index)
    for _ in range(_MAX_TRIES):
        scene = sample_split_scene(rng, split)
        try:
            pair = sample_question(scene, rng, kind)
        except ValueError:  # a position question about a scene of identical twins only
            continue
        return VQAExample(scene, render(scene, size), pair)
    raise RuntimeError(f"no {kind} question in {_MAX_TRIES} scenes")


def edit_example(split: Split, index: int, size: int = 64, kind: str | None = None) -> EditExample:
    """(source, instruction, target), both scenes of ``split``; ``kind`` fixes the edit kind."""
    rng = example_rng("edit", split, index)
    for _ in range(_MAX_TRIES):
        scene = sample_split_scene(rng, split)
        if kind is not None and kind not in applicable_kinds(scene):
            continue
        # One scene in ten is held out, so a held-out source needs ~10 edits for a held-out target.
        for _ in range(50):
            triplet = sample_edit(scene, rng, kind)
            if triplet.target.split() is split:
                return EditExample(triplet, render(triplet.source, size), render(triplet.target, size))
    raise RuntimeError(f"no {kind} edit within {split.value} in {_MAX_TRIES} scenes")


T = TypeVar("T")


def stream(make: Callable[[Split, int], T], split: Split, start: int = 0, stop: int | None = None,
           step: int = 1) -> Iterator[T]:
    """Examples ``start, start+step, …`` (endless if ``stop`` is None): ``step`` shards across workers.

    ``stream(caption_example, Split.TRAIN, start=rank, step=world_size)``.
    """
    index = start
    while stop is None or index < stop:
        yield make(split, index)
        index += step


def scene_example(split: Split, index: int) -> Scene:
    """Just the scene of a stream position, for callers that render at their own size."""
    return sample_split_scene(example_rng("scene", split, index), split)
