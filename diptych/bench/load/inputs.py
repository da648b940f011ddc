"""Pictures for the VQA and edit scenarios: a built-in set drawn here, or the files of a folder.

The built-in set is drawn with PIL from a fixed list of shapes and colours, so every run on
every machine sends byte-identical pictures: a benchmark's inputs must not depend on files
fetched from anywhere.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw

_MIME = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".webp": "image/webp"}
_COLOURS = {"red": (220, 40, 40), "blue": (40, 80, 220), "green": (40, 170, 70), "yellow": (235, 200, 40),
            "purple": (140, 60, 180), "orange": (240, 140, 30)}
_SHAPES = ("circle", "square", "triangle")


@dataclass(frozen=True)
class InputImage:
    """One picture as sent: encoded bytes, their MIME type, and what to ask or change about it."""

    name: str
    data: bytes
    mime: str
    question: str
    instruction: str


def _draw(shape: str, colour: tuple[int, int, int], size: int, number: int) -> Image.Image:
    image = Image.new("RGB", (size, size), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    margin = size // 6 + number % 4
    box = (margin, margin, size - margin, size - margin - 4)
    if shape == "circle":
        draw.ellipse(box, fill=colour)
    elif shape == "square":
        draw.rectangle(box, fill=colour)
    else:
        draw.polygon([(box[0], box[3]), ((box[0] + box[2]) // 2, box[1]), (box[2], box[3])], fill=colour)
    # A row of 12 dots along the bottom spells the picture's number in binary: no two pictures
    # are equal, so a server's image caches (vLLM's prefix cache, edit latents) never hit
    # across requests that a benchmark means to be different.
    dot = max(1, size // 16)
    for bit in range(12):
        if number >> bit & 1:
            x = dot + bit * dot
            draw.rectangle((x, size - 2 * dot, x + dot - 1, size - dot - 1), fill=(0, 0, 0))
    return image


def builtin_images(count: int = 256, size: int = 64) -> tuple[InputImage, ...]:
    """``count`` pictures of one coloured shape on white, the same bytes on every call."""
    if not 1 <= count <= 4096 or size < 32:
        raise ValueError(f"builtin_images: count {count} must be 1..4096 and size {size} >= 32")
    colours = list(_COLOURS.items())
    images = []
    for i in range(count):
        shape = _SHAPES[i % len(_SHAPES)]
        colour_name, colour = colours[i % len(colours)]
        other = colours[(i + 1) % len(colours)][0]
        buffer = io.BytesIO()
        # No timestamps or text chunks in the PNG: identical bytes across runs.
        _draw(shape, colour, size, i).save(buffer, format="PNG", optimize=False)
        images.append(InputImage(
            name=f"{colour_name}-{shape}-{i}.png", data=buffer.getvalue(), mime="image/png",
            question=f"What colour is the {shape}?", instruction=f"make the {shape} {other}",
        ))
    return tuple(images)


def folder_images(folder: Path) -> tuple[InputImage, ...]:
    """The PNG, JPEG and WebP files directly in ``folder``, sorted by name, sent as they are."""
    if not folder.is_dir():
        raise ValueError(f"--images {folder}: not a directory")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in _MIME)
    if not files:
        raise ValueError(f"--images {folder}: no .png, .jpg, .jpeg or .webp files in it")
    return tuple(
        InputImage(name=p.name, data=p.read_bytes(), mime=_MIME[p.suffix.lower()],
                   question="What is in the picture?", instruction="make it brighter")
        for p in files
    )
