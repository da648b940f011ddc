"""Captions, questions and edits say what their scenes show (read back by an independent reader)."""

from __future__ import annotations

import functools
import random
from collections import Counter

import pytest

from diptych.bench.shapes.analyser import DetectedObject, analyse
from diptych.bench.shapes.checks import Count, Pattern, Relation
from diptych.bench.shapes.edits import EDIT_KINDS, sample_edit
from diptych.bench.shapes.language import (
    CAPTION_KINDS,
    Caption,
    caption_of_kind,
    drawn_scene,
    named_scene,
)
from diptych.bench.shapes.vqa import QUESTION_KINDS, sample_question
from diptych.bench.shapes.world import (
    CELL_NAMES,
    Scene,
    ShapeObject,
    render,
    sample_scene,
)
from tests.bench.shapes.reader import INSTRUCTION, QUESTION, read_cell, read_phrase

SCENES = [sample_scene(random.Random(seed)) for seed in range(400)]


@functools.cache
def _seen(scene: Scene) -> tuple[DetectedObject, ...]:
    """The analyser's reading of the scene's picture, shared by the caption kinds' tests."""
    return analyse(render(scene)).objects


def test_fixed_grammar_examples() -> None:
    scene = Scene((ShapeObject(0, "circle", "red", "small"), ShapeObject(1, "square", "blue", "large")))
    rng = random.Random(0)
    assert caption_of_kind(scene, "full", rng).text == "a small red circle in the top left and a large blue square in the top middle"
    assert caption_of_kind(scene, "position", rng).text in {
        "a red circle to the left of a blue square", "a blue square to the right of a red circle"}
    assert caption_of_kind(scene, "count", rng) is None  # nothing comes in twos
    orange = Scene((ShapeObject(8, "triangle", "orange", "large"),))
    assert caption_of_kind(orange, "layout", rng).text == "a large orange triangle in the bottom right"
    assert caption_of_kind(orange, "color", rng).text == "an orange triangle"


@pytest.mark.parametrize("kind", CAPTION_KINDS)
def test_captions_are_true_of_their_scene_and_of_its_picture(kind: str) -> None:
    rng, made = random.Random(kind), 0
    for scene in SCENES[:150]:
        caption = caption_of_kind(scene, kind, rng)
        if caption is None:
            continue
        made += 1
        assert caption.kind == kind and caption.requirements
        assert all(r.holds(scene.objects) for r in caption.requirements), (caption, scene)
        assert all(r.holds(_seen(scene)) for r in caption.requirements), (caption, scene)
    assert made >= 10


def test_requirements_can_fail() -> None:
    scene = Scene((ShapeObject(0, "circle", "red", "small"), ShapeObject(4, "square", "blue", "large")))
    full = caption_of_kind(scene, "full", random.Random(0))
    moved = Scene((ShapeObject(2, "circle", "red", "small"), ShapeObject(4, "square", "blue", "large")))
    assert not all(r.holds(moved.objects) for r in full.requirements)
    assert not Relation(Pattern("square"), "left of", Pattern("circle")).holds(scene.objects)
    assert Relation(Pattern("circle"), "above", Pattern("square")).holds(scene.objects)
    assert not Count(Pattern("circle"), 2).holds(scene.objects)
    assert not Count(Pattern("circle", color="blue"), 1, at_least=True).holds(scene.objects)


def test_questions_have_the_answers_their_scene_gives() -> None:
    rng, kinds, yes = random.Random(1), Counter(), Counter()
    for index, scene in enumerate(SCENES):
        kind = QUESTION_KINDS[index % len(QUESTION_KINDS)]
        try:
            pair = sample_question(scene, rng, kind)
        except ValueError:
            assert kind == "position"
            continue
        kinds[pair.kind] += 1
        verb, phrase = QUESTION.match(pair.question).groups()
        read = read_phrase(phrase)
        if verb in ("what color is", "what shape is", "where is"):
            (obj,) = read.select(scene)  # names exactly one object
            attribute = {"what color is": "color", "what shape is": "shape", "where is": "cell"}[verb]
            assert getattr(read, attribute) is None, "the question names what it asks"
            assert pair.answer == (CELL_NAMES[obj.cell] if attribute == "cell" else getattr(obj, attribute))
            assert pair.cells == {obj.cell}
            continue
        selected = read.select(scene)
        assert pair.cells == {obj.cell for obj in selected}  # what is counted or sought, perhaps nothing
        if verb == "how many":
            assert pair.answer == str(len(selected))
        else:
            assert pair.answer == ("yes" if selected else "no")
            yes[pair.answer] += 1
    assert set(kinds) == set(QUESTION_KINDS) and min(kinds.values()) >= 70
    assert 0.35 < yes["yes"] / sum(yes.values()) < 0.65


@pytest.mark.parametrize("kind", EDIT_KINDS)
def test_edits_do_what_they_say_and_nothing_else(kind: str) -> None:
    rng, made = random.Random(kind), 0
    for scene in SCENES[:200]:
        try:
            triplet = sample_edit(scene, rng, kind)
        except ValueError:
            assert (kind, len(scene.objects)) in {("remove", 1), ("add", 3)}
            continue
        made += 1
        verb, phrase, destination = INSTRUCTION.match(triplet.instruction).groups()
        source, target = triplet.source, triplet.target
        assert [o for o in source.objects if o.cell not in triplet.cells] == [
            o for o in target.objects if o.cell not in triplet.cells]
        if verb == "add":
            added = read_phrase(phrase)
            assert source.at(added.cell) is None and added.number == 1
            assert target.at(added.cell) == ShapeObject(added.cell, added.shape, added.color, added.size)
            continue
        if verb == "make":
            phrase, _, color = phrase.rpartition(" ")
        (obj,) = read_phrase(phrase).select(source)
        assert obj.cell == triplet.cells[0]
        if verb == "remove":
            assert target.at(obj.cell) is None and len(target.objects) == len(source.objects) - 1
        elif verb == "make":
            assert color != obj.color and target.at(obj.cell) == ShapeObject(obj.cell, obj.shape, color, obj.size)
        else:
            cell = read_cell(destination)
            assert source.at(cell) is None and triplet.cells == (obj.cell, cell)
            assert target.at(obj.cell) is None and target.at(cell) == ShapeObject(cell, obj.shape, obj.color, obj.size)
    assert made >= 100


def test_a_drawing_keeps_just_the_objects_its_caption_names() -> None:
    red_circle = ShapeObject(cell=0, shape="circle", color="red", size="small")
    blue_square = ShapeObject(cell=4, shape="square", color="blue", size="large")
    green_triangle = ShapeObject(cell=8, shape="triangle", color="green", size="small")
    scene = Scene((red_circle, blue_square, green_triangle))
    a_square = Caption("a square", "object", (Count(Pattern(shape="square"), 1, at_least=True),))
    above = Caption("a red circle above a green triangle", "position",
                    (Relation(Pattern(shape="circle", color="red"), "above", Pattern(shape="triangle", color="green")),))
    assert named_scene(scene, a_square).objects == (blue_square,)
    assert named_scene(scene, above).objects == (red_circle, green_triangle)
    twins = Scene((red_circle, ShapeObject(cell=2, shape="circle", color="red", size="large")))
    one_red_circle = Caption("a red circle", "color", (Count(Pattern(shape="circle", color="red"), 1, at_least=True),))
    assert len(named_scene(twins, one_red_circle).objects) == 1


def test_a_drawing_places_what_its_caption_leaves_open_and_keeps_what_it_fixes() -> None:
    red_circle = ShapeObject(cell=0, shape="circle", color="red", size="small")
    blue_square = ShapeObject(cell=4, shape="square", color="blue", size="large")
    green_triangle = ShapeObject(cell=8, shape="triangle", color="green", size="small")
    scene = Scene((red_circle, blue_square, green_triangle))
    square, triangle = Pattern(shape="square"), Pattern(shape="triangle")
    a_triangle_and_a_square = Caption("a triangle and a square", "two_objects",
                                      (Count(triangle, 1, at_least=True), Count(square, 1, at_least=True)))
    # In order of mention, side by side on the middle row; attributes the caption leaves open are kept.
    assert drawn_scene(scene, a_triangle_and_a_square).objects == (
        ShapeObject(3, "triangle", "green", "small"), ShapeObject(5, "square", "blue", "large"))
    a_square = Caption("a square", "object", (Count(square, 1, at_least=True),))
    assert drawn_scene(scene, a_square).objects == (ShapeObject(4, "square", "blue", "large"),)
    red_circle_pattern, green_triangle_pattern = Pattern("circle", "red"), Pattern("triangle", "green")
    for relation, cells in (("above", (1, 7)), ("left of", (3, 5))):
        caption = Caption("", "position", (Relation(red_circle_pattern, relation, green_triangle_pattern),))
        drawn = drawn_scene(scene, caption)
        assert {(obj.shape, obj.cell) for obj in drawn.objects} == {("circle", cells[0]), ("triangle", cells[1])}
        assert caption.requirements[0].holds(drawn.objects)
    # A caption that places its object, or describes every object, is drawn as written.
    in_the_corner = Caption("a red circle in the top left", "layout",
                            (Count(Pattern("circle", "red", "small", 0), 1, at_least=True),))
    assert drawn_scene(scene, in_the_corner).objects == (red_circle,)
    full = caption_of_kind(scene, "full", random.Random(0))
    assert full is not None and drawn_scene(scene, full) == scene
