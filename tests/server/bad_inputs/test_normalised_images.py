"""Images that are odd but valid are accepted and normalised: the engine receives 8-bit RGB, upright.

Decisions (see media.py): CMYK → RGB; 16 bits per channel → 8 (scaled, not clipped);
alpha → composited over white (a mask keeps its alpha: it is the mask's meaning); EXIF
orientation → applied, so the engine sees what a viewer shows; MPO (a camera JPEG with
extra pictures) → its first picture. Animated images are refused (cases_images.py).
Each is sent both ways: as a chat data URL and as an edit upload.
"""

from __future__ import annotations

import pytest
from PIL import Image

from tests.server.bad_inputs import images
from tests.server.bad_inputs.conftest import ScriptedClientFactory
from tests.server.bad_inputs.table import chat_image, data_url, edit, upload

RED, BLUE, WHITE = (255, 0, 0), (0, 0, 255), (255, 255, 255)
TRANSPORTS = ("chat", "edit")


async def received(factory: ScriptedClientFactory, transport: str, data: bytes, mask: bytes | None = None
                   ) -> Image.Image:
    """The image the engine was handed for ``data``, sent over ``transport``."""
    client, scripted = factory()
    if transport == "chat":
        request = chat_image(data_url(data))
    else:
        files = (upload(data),) + ((upload(mask, "mask"),) if mask is not None else ())
        request = edit(files=files)
    response = await client.request(request.method, request.path, **request.httpx_kwargs())
    assert response.status_code == 200, response.text
    if transport == "chat":
        (prompt,) = scripted.ar.prompts
        (image,) = prompt.images
    else:
        (engine_request,) = scripted.flow.requests
        (image,) = engine_request.source_images
    assert image.mode == "RGB"
    return image


def close(actual: tuple[int, ...], expected: tuple[int, ...], tolerance: int = 0) -> bool:
    return all(abs(a - e) <= tolerance for a, e in zip(actual, expected, strict=True))


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_cmyk_jpeg_becomes_rgb(scripted_client: ScriptedClientFactory, transport: str) -> None:
    image = await received(scripted_client, transport, images.cmyk_jpeg((32, 24), (0, 255, 255, 0)))
    assert image.size == (32, 24)
    assert close(image.getpixel((16, 12)), RED, tolerance=8)


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_16_bit_grey_is_scaled_to_8_bits(scripted_client: ScriptedClientFactory, transport: str) -> None:
    grey = Image.new("I;16", (32, 8), 0x1000)
    grey.paste(Image.new("I;16", (16, 8), 0xF000), (16, 0))
    image = await received(scripted_client, transport, images.encode(grey, "PNG"))
    assert image.getpixel((4, 4)) == (16, 16, 16) and image.getpixel((28, 4)) == (240, 240, 240)


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_16_bit_rgb_is_scaled_to_8_bits(scripted_client: ScriptedClientFactory, transport: str) -> None:
    image = await received(scripted_client, transport, images.png_rgb48((8, 4), (65535, 0, 32768)))
    assert image.size == (8, 4) and image.getpixel((3, 2)) == (255, 0, 128)


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("fmt", ["PNG", "WEBP"])
async def test_alpha_is_composited_over_white(scripted_client: ScriptedClientFactory, transport: str,
                                              fmt: str) -> None:
    rgba = Image.new("RGBA", (30, 10), (255, 0, 0, 255))  # opaque red | half-transparent black | transparent
    rgba.paste(Image.new("RGBA", (10, 10), (0, 0, 0, 128)), (10, 0))
    rgba.paste(Image.new("RGBA", (10, 10), (0, 0, 0, 0)), (20, 0))
    params = {"lossless": True} if fmt == "WEBP" else {}
    image = await received(scripted_client, transport, images.encode(rgba, fmt, **params))
    assert image.getpixel((5, 5)) == RED
    assert close(image.getpixel((15, 5)), (127, 127, 127), tolerance=1)
    assert image.getpixel((25, 5)) == WHITE


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("mode", ["LA", "P", "1", "L"])
async def test_grey_palette_and_bilevel_modes_become_rgb(scripted_client: ScriptedClientFactory, transport: str,
                                                         mode: str) -> None:
    if mode == "LA":
        data = images.encode(Image.new("LA", (8, 8), (0, 0)), "PNG")  # black, fully transparent
        expected = WHITE
    elif mode == "P":
        palette = Image.new("RGB", (8, 8), BLUE).convert("P")
        data = images.encode(palette, "PNG")
        expected = BLUE
    elif mode == "1":
        data = images.encode(Image.new("1", (8, 8), 1), "PNG")
        expected = WHITE
    else:
        data = images.encode(Image.new("L", (8, 8), 77), "JPEG", quality=100)
        expected = (77, 77, 77)
    image = await received(scripted_client, transport, data)
    assert close(image.getpixel((4, 4)), expected, tolerance=1)


# Where the stored image's top-left corner appears once the EXIF orientation is applied, and
# whether width and height swap. Written out from the EXIF specification, independently of PIL.
ORIENTATIONS = {
    1: ("top-left", False), 2: ("top-right", False), 3: ("bottom-right", False), 4: ("bottom-left", False),
    5: ("top-left", True), 6: ("top-right", True), 7: ("bottom-right", True), 8: ("bottom-left", True),
}


def corners(image: Image.Image) -> dict[str, tuple[int, ...]]:
    w, h = image.size
    return {"top-left": image.getpixel((2, 2)), "top-right": image.getpixel((w - 3, 2)),
            "bottom-left": image.getpixel((2, h - 3)), "bottom-right": image.getpixel((w - 3, h - 3))}


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize(("fmt", "orientation"), [*(("JPEG", o) for o in ORIENTATIONS), ("PNG", 6), ("WEBP", 8)])
async def test_exif_orientation_is_applied(scripted_client: ScriptedClientFactory, transport: str, fmt: str,
                                           orientation: int) -> None:
    stored = Image.new("RGB", (40, 20), BLUE)
    stored.paste(Image.new("RGB", (12, 8), RED), (0, 0))  # a marker in the stored top-left corner
    image = await received(scripted_client, transport, images.with_orientation(stored, fmt, orientation))
    marker_corner, swapped = ORIENTATIONS[orientation]
    assert image.size == ((20, 40) if swapped else (40, 20))
    for corner, colour in corners(image).items():
        assert close(colour, RED if corner == marker_corner else BLUE, tolerance=40), (corner, colour)


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_camera_mpo_jpeg_gives_its_first_picture(scripted_client: ScriptedClientFactory, transport: str) -> None:
    first, second = Image.new("RGB", (16, 16), RED), Image.new("RGB", (16, 16), BLUE)
    data = images.encode(first, "MPO", save_all=True, append_images=[second], quality=95)
    image = await received(scripted_client, transport, data)
    assert close(image.getpixel((8, 8)), RED, tolerance=8)


async def test_mask_keeps_its_alpha_and_follows_exif(scripted_client: ScriptedClientFactory) -> None:
    client, scripted = scripted_client()
    mask = Image.new("RGBA", (40, 20), (0, 0, 0, 255))
    mask.paste(Image.new("RGBA", (12, 8), (0, 0, 0, 0)), (0, 0))  # transparent: the area to edit
    source = images.with_orientation(Image.new("RGB", (40, 20), BLUE), "PNG", 6)
    request = edit(files=(upload(source), upload(images.with_orientation(mask, "PNG", 6), "mask")))
    response = await client.request(request.method, request.path, **request.httpx_kwargs())
    assert response.status_code == 200, response.text
    (engine_request,) = scripted.flow.requests
    assert engine_request.source_images[0].size == engine_request.mask.size == (20, 40)
    assert engine_request.mask.mode == "RGBA"
    assert engine_request.mask.getpixel((17, 2))[3] == 0 and engine_request.mask.getpixel((2, 30))[3] == 255
