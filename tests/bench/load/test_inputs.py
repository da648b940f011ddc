"""The built-in pictures and folders of pictures."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image

from diptych.bench.load.inputs import builtin_images, folder_images


def test_builtin_pictures_are_the_same_bytes_every_time_and_all_different() -> None:
    first, again = builtin_images(), builtin_images()
    assert [i.data for i in first] == [i.data for i in again]
    assert len({i.data for i in first}) == len(first) == 256
    picture = Image.open(io.BytesIO(first[0].data))
    assert picture.size == (64, 64) and picture.format == "PNG"
    # Not blank: a shape of a colour that is not the white background.
    assert len(picture.getcolors()) >= 2


def test_folder_pictures_are_sent_as_they_are(tmp_path: Path) -> None:
    Image.new("RGB", (8, 8), "red").save(tmp_path / "b.jpg")
    (tmp_path / "a.png").write_bytes(builtin_images(1)[0].data)
    (tmp_path / "notes.txt").write_text("not a picture")
    images = folder_images(tmp_path)
    assert [(i.name, i.mime) for i in images] == [("a.png", "image/png"), ("b.jpg", "image/jpeg")]
    assert images[1].data == (tmp_path / "b.jpg").read_bytes()
    with pytest.raises(ValueError, match="no .png"):
        folder_images(_empty(tmp_path))


def _empty(tmp_path: Path) -> Path:
    empty = tmp_path / "empty"
    empty.mkdir()
    return empty
