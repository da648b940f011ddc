"""ShapesBench's items and judges, without HTTP: what to ask, and whether an answer is right.

Items come from the held-out split of the shapes world (``data.py`` beside it), so a
model trained on the training split is tested on scenes it never saw. Item ``i`` of a
task has kind ``KINDS[i % len(KINDS)]``: every kind gets its share at any ``n``. The
``seed`` chooses a disjoint window of held-out indices; an image item also carries the
seed it is requested with (``noise_seed``).

Judging:

* VQA: the reply is normalised (``normalise_answer``) and must begin with the canonical
  answer's words; see ``answer_matches``.
* text-to-image: the returned picture is read by the analyser, and every requirement of
  the prompt must hold (GenEval's rule: a prompt counts only when all its checks pass);
  each check is also counted by its kind (object, color, count, position).
* edit: the returned picture is read by the analyser; *changed* holds when the cells the
  instruction touches hold exactly the target's objects there, *kept* when every other
  cell holds exactly what the source had; an edit is correct when both hold.
"""

from __future__ import annotations

import io
import re
from collections.abc import Sequence
from dataclasses import dataclass

from PIL import Image

from diptych.bench.shapes.analyser import analyse
from diptych.bench.shapes.checks import Described, Requirement
from diptych.bench.shapes.data import caption_example, edit_example, vqa_example
from diptych.bench.shapes.edits import EDIT_KINDS, EditTriplet
from diptych.bench.shapes.vqa import QUESTION_KINDS
from diptych.bench.shapes.world import Scene, Split

T2I_KINDS: tuple[str, ...] = ("object", "color", "count", "two_objects", "color_attr", "position", "layout")
SEED_STRIDE = 1_000_000  # held-out indices of seed s: [s·stride, s·stride + n)

_NUMBERS = {"zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6", "seven": "7",
            "eight": "8", "nine": "9", "ten": "10", "none": "0"}
_SPELLING = {"centre": "center", "colour": "color", "grey": "gray"}
_FILLER = {"the", "a", "an", "it", "its", "is", "s", "answer"}
_POSITION_WORDS = {"top", "bottom", "left", "right", "middle", "center"}


@dataclass(frozen=True)
class VQAItem:
    scene: Scene
    image_png: bytes
    question: str
    answer: str
    kind: str


@dataclass(frozen=True)
class T2IItem:
    scene: Scene  # the scene the prompt was written from: one picture the prompt is true of
    prompt: str
    kind: str
    requirements: tuple[Requirement, ...]
    noise_seed: int  # sent as the image request's seed (see noise_seed)


@dataclass(frozen=True)
class EditItem:
    source_png: bytes
    triplet: EditTriplet
    noise_seed: int  # sent as the image request's seed (see noise_seed)

    @property
    def instruction(self) -> str:
        return self.triplet.instruction

    @property
    def kind(self) -> str:
        return self.triplet.kind


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def noise_seed(seed: int, index: int) -> int:
    """The seed an image item is requested with: its own, from the run's seed and its index.

    One seed sent with every item made a run one draw of the starting noise, shared by all
    its pictures, and that noise chose where objects go: the same transformer (run b3 of
    docs/architecture.md) scored 55, 66, 49 and 41% on one set of text-to-image items
    sampled from four seeds. With a seed an item, a score averages over as many draws as
    it has items, and a run is still reproducible.
    """
    return seed * SEED_STRIDE + index


def vqa_items(n: int, seed: int, size: int = 64) -> list[VQAItem]:
    items = []
    for i in range(n):
        example = vqa_example(Split.HELDOUT, seed * SEED_STRIDE + i, size, QUESTION_KINDS[i % len(QUESTION_KINDS)])
        items.append(VQAItem(example.scene, png(example.image), example.pair.question, example.pair.answer, example.pair.kind))
    return items


def t2i_items(n: int, seed: int) -> list[T2IItem]:
    items = []
    for i in range(n):
        example = caption_example(Split.HELDOUT, seed * SEED_STRIDE + i, kind=T2I_KINDS[i % len(T2I_KINDS)])
        items.append(T2IItem(example.scene, example.caption.text, example.caption.kind, example.caption.requirements,
                             noise_seed(seed, i)))
    return items


def edit_items(n: int, seed: int, size: int = 64) -> list[EditItem]:
    items = []
    for i in range(n):
        example = edit_example(Split.HELDOUT, seed * SEED_STRIDE + i, size, EDIT_KINDS[i % len(EDIT_KINDS)])
        items.append(EditItem(png(example.source_image), example.triplet, noise_seed(seed, i)))
    return items


# -- judges -----------------------------------------------------------------------------


def normalise_answer(text: str) -> list[str]:
    """Lowercase words without punctuation, British spellings and number words mapped,
    leading filler ("the", "a", "it is") dropped: "It's two." → ["2"]."""
    words = re.sub(r"[^a-z0-9]+", " ", text.lower()).split()
    words = [_NUMBERS.get(_SPELLING.get(w, w), _SPELLING.get(w, w)) for w in words]
    while words and words[0] in _FILLER:
        words.pop(0)
    return words


def answer_matches(reply: str, answer: str) -> bool:
    """The reply begins with the answer's words: "Red circle." answers "red", "top left
    corner" answers "top left", "Yes, there is" answers "yes". A position word may not
    follow a position answer: "top left" does not answer "top" (no cell is called "top",
    but a model's reply may run on)."""
    got, want = normalise_answer(reply), normalise_answer(answer)
    if not want or got[: len(want)] != want:
        return False
    following = got[len(want)] if len(got) > len(want) else None
    return not (want[-1] in _POSITION_WORDS and following in _POSITION_WORDS)


@dataclass(frozen=True)
class T2IVerdict:
    correct: bool
    checks: tuple[tuple[str, bool], ...]  # (check kind, held) per requirement
    found: str  # what the analyser read, for reports


def judge_t2i(item: T2IItem, image: Image.Image) -> T2IVerdict:
    objects = analyse(image).objects
    checks = tuple((requirement.kind, requirement.holds(objects)) for requirement in item.requirements)
    return T2IVerdict(all(held for _, held in checks), checks, describe(objects))


@dataclass(frozen=True)
class EditVerdict:
    changed: bool
    kept: bool
    found: str

    @property
    def correct(self) -> bool:
        return self.changed and self.kept


def judge_edit(triplet: EditTriplet, image: Image.Image) -> EditVerdict:
    objects = analyse(image).objects
    found = [(obj.cell, obj.shape, obj.color, obj.size) for obj in objects]
    target = [(obj.cell, obj.shape, obj.color, obj.size) for obj in triplet.target.objects]
    touched = set(triplet.cells)

    def within(objects: list[tuple[int, str, str, str]], inside: bool) -> list[tuple[int, str, str, str]]:
        return sorted(obj for obj in objects if (obj[0] in touched) == inside)

    # Outside the touched cells the target equals the source, so "kept" compares with either.
    return EditVerdict(within(found, True) == within(target, True), within(found, False) == within(target, False),
                       describe(objects))


def describe(objects: Sequence[Described]) -> str:
    """"small red circle @0, large blue square @4": what was found, for failure reports."""
    return ", ".join(f"{o.size} {o.color} {o.shape} @{o.cell}" for o in objects) or "nothing"
