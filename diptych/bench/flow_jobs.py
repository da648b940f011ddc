"""The requests of ``diptych bench flow``: what each family's bursts, single requests and warm-up are made of.

Every request differs from every other in prompt and seed, so no cache on either side
helps one request with another's work, except where a scenario measures exactly that (the
sequential edits of one picture). Reference pictures are drawn here with PIL and sent as
PNG bytes, so the server and diffusers decode the same pixels.
"""

from __future__ import annotations

import io
from typing import Protocol

import numpy as np
from PIL import Image, ImageDraw

from diptych.bench.flow_server import ImageJob

_COLOURS = ("red", "blue", "green", "yellow", "purple", "orange", "black", "white")
_SHAPES = ("circle", "square", "triangle", "star", "cross", "line")
_PLACES = ("on a white background", "next to a tree", "in the middle of the image", "under the sun", "at the top")
# Appended to every other prompt: prompts of a burst then differ in length by about 40 tokens.
_LONG_TAIL = (
    ", drawn with thin dark outlines and flat pastel colours, soft morning light coming from the left, "
    "a faint paper texture over the whole picture, a small signature in the lower right corner, and plenty "
    "of empty space around the subject so that it can be cropped later"
)
# Pixel sizes are multiples of this for every family benchmarked (2x2 patches of a 16x or 8x VAE).
_SIZE_STEP = 32
# The edit family's server and pipeline agree on this negative prompt when none is named.
_EMPTY_NEGATIVE = " "


class FlowJobs(Protocol):
    """What ``bench flow`` asks of a family's requests."""

    def single(self, guidance: float) -> ImageJob:
        """One text-to-image request at the benchmark's size."""

    def burst(self, count: int) -> list[ImageJob]:
        """``count`` requests sent at once (and one by one through diffusers)."""

    def warmup_singles(self) -> list[ImageJob]:
        """Run alone on both sides before measuring: one-off costs of each kind of request."""

    def warmup_burst(self) -> list[ImageJob]:
        """Sent at once to the server before measuring: its batched shapes."""

    def sequential_edits(self, count: int) -> list[ImageJob]:
        """``count`` edits of one picture with different instructions (none for a family that does not edit)."""


class TextToImageJobs:
    """Text-to-image requests with distinct prompts, negative prompts and seeds."""

    def __init__(self, width: int, height: int, steps: int, guidance: float, requests: int) -> None:
        self.width, self.height, self.steps, self.guidance, self.requests = width, height, steps, guidance, requests
        self._count = 0

    def _next(self) -> int:
        self._count += 1
        return self._count - 1

    def single(self, guidance: float) -> ImageJob:
        k = self._next()
        return ImageJob(prompt=_prompt(k), negative_prompt=f"blurry, dark, picture {k}", seed=1000 + k,
                        width=self.width, height=self.height, steps=self.steps, guidance_scale=guidance)

    def burst(self, count: int) -> list[ImageJob]:
        return [self.single(self.guidance) for _ in range(count)]

    def warmup_singles(self) -> list[ImageJob]:
        return [self.single(self.guidance), self.single(1.0)]

    def warmup_burst(self) -> list[ImageJob]:
        return self.burst(self.requests)

    def sequential_edits(self, count: int) -> list[ImageJob]:
        return []


class MixedJobs(TextToImageJobs):
    """Bursts that mix generations and edits with one and two references, two sizes and two prompt lengths.

    The i-th request of a burst is a generation, an edit with one reference or one with two
    (i mod 3), at the benchmark's size or at :func:`second_size` (i mod 2), with a short or a
    long prompt ((i mod 4) >= 2). Negative prompts are the pipeline's default (``" "``).
    """

    def __init__(self, width: int, height: int, steps: int, guidance: float, requests: int) -> None:
        super().__init__(width, height, steps, guidance, requests)
        self._pictures = 0

    def _picture(self) -> bytes:
        """A picture no request has had before."""
        self._pictures += 1
        return reference_picture(self._pictures - 1, self.width, self.height)

    def single(self, guidance: float) -> ImageJob:
        k = self._next()
        return self._job(k, _prompt(k), (self.width, self.height), guidance, ())

    def burst(self, count: int) -> list[ImageJob]:
        return [self._mixed(i) for i in range(count)]

    def warmup_singles(self) -> list[ImageJob]:
        return [self.single(self.guidance), self.single(1.0), self._mixed(2)]

    def warmup_burst(self) -> list[ImageJob]:
        return self.burst(3)

    def sequential_edits(self, count: int) -> list[ImageJob]:
        picture = self._picture()
        return [
            self._job(self._next(), f"make the {_SHAPES[i % 6]} {_COLOURS[i % 8]} and put it {_PLACES[i % 5]}",
                      (self.width, self.height), self.guidance, (picture,))
            for i in range(count)
        ]

    def _mixed(self, i: int) -> ImageJob:
        k = self._next()
        size = (self.width, self.height) if i % 2 == 0 else second_size(self.width, self.height)
        tail = _LONG_TAIL if i % 4 >= 2 else ""
        references = tuple(self._picture() for _ in range(i % 3))
        prompt = f"put the {_SHAPES[k % 6]} {_PLACES[k % 5]}, edit {k}" if references else _prompt(k)
        return self._job(k, prompt + tail, size, self.guidance, references)

    def _job(self, k: int, prompt: str, size: tuple[int, int], guidance: float,
             references: tuple[bytes, ...]) -> ImageJob:
        return ImageJob(prompt=prompt, negative_prompt=_EMPTY_NEGATIVE, seed=1000 + k, width=size[0],
                        height=size[1], steps=self.steps, guidance_scale=guidance, references=references)


def second_size(width: int, height: int) -> tuple[int, int]:
    """The other size of a mixed burst: three quarters of the height, on the size grid (256x256 -> 256x192)."""
    return width, max(_SIZE_STEP, height * 3 // 4 // _SIZE_STEP * _SIZE_STEP)


def reference_picture(index: int, width: int, height: int) -> bytes:
    """A PNG unlike any other index's: a gradient, three shapes and a row of dots counting ``index``.

    Aspects vary with ``index`` (square, wider, taller), around ``width`` x ``height``.
    """
    aspect = index % 3
    size = (width * 5 // 4, height) if aspect == 1 else (width, height * 5 // 4) if aspect == 2 else (width, height)
    rng = np.random.default_rng(index)
    ramp = np.linspace(0, 1, size[0])[None, :, None] * rng.uniform(60, 255, 3)
    fall = np.linspace(1, 0, size[1])[:, None, None] * rng.uniform(0, 120, 3)
    picture = Image.fromarray(np.clip(ramp + fall, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(picture)
    for _ in range(3):
        x0, y0 = rng.uniform(0, 0.6, 2) * size
        x1, y1 = (x0, y0) + rng.uniform(0.15, 0.4, 2) * size
        draw.ellipse((x0, y0, x1, y1), fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
    for dot in range(index % 16 + 1):
        draw.rectangle((2 + 4 * dot, 2, 4 + 4 * dot, 4), fill=(0, 0, 0))
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()


def _prompt(k: int) -> str:
    return f"a {_COLOURS[k % 8]} {_SHAPES[k % 6]} {_PLACES[k % 5]}, picture {k}"
