"""Bad images, each sent both ways: as a chat data URL and as an edit upload. Plus data-URL and URL-scheme
defects, which only chat has. Images that are odd but valid (CMYK, 16-bit, alpha, EXIF-rotated) are
accepted and normalised; test_normalised_images.py covers them."""

from __future__ import annotations

from PIL import Image

from tests.server.bad_inputs import images
from tests.server.bad_inputs.table import Case, chat_image, data_url, edit, upload

CHAT_PARAM = "messages.0.content.0.image_url"
SMALL_LIMIT = {"max_input_pixels": 64 * 64}

# (id, bytes, code, settings)
BAD_IMAGES: list[tuple[str, bytes, str, dict[str, object]]] = [
    ("zero-bytes", b"", "invalid_image", {}),
    ("text", b"this is not an image", "invalid_image", {}),
    ("png-signature-only", b"\x89PNG\r\n\x1a\n", "invalid_image", {}),
    ("png-truncated-header", images.png()[:40], "invalid_image", {}),
    ("png-truncated-half", images.truncated(images.png((64, 64))), "invalid_image", {}),
    ("png-bad-crc", images.png_bad_crc(), "invalid_image", {}),
    ("png-corrupt-pixels", images.png_corrupt_pixels(), "invalid_image", {}),
    ("png-zero-width", images.png_zero_width(), "invalid_image", {}),
    ("png-text-chunk-bomb", images.png_ztxt_bomb(), "invalid_image", {}),
    ("jpeg-truncated", images.truncated(images.jpeg((64, 64))), "invalid_image", {}),
    ("jpeg-corrupt-huffman", images.jpeg_corrupt_huffman(), "invalid_image", {}),
    ("webp-truncated", images.truncated(images.webp((64, 64))), "invalid_image", {}),
    ("png-bomb-header-100000x100000", images.png_header_bomb(), "image_too_large", {}),
    ("png-bomb-8192x8192-1bit", images.png_real_bomb(), "image_too_large", {}),
    ("jpeg-bomb-header-65000x65000", images.jpeg_header_bomb(), "image_too_large", {}),
    ("webp-bomb-header-16384x16384", images.webp_header_bomb(), "image_too_large", {}),
    ("png-over-pixel-limit", images.png((65, 64)), "image_too_large", SMALL_LIMIT),
    ("animated-png", images.animated("PNG"), "invalid_image", {}),
    ("animated-webp", images.animated("WEBP"), "invalid_image", {}),
    ("gif", images.animated("GIF"), "invalid_image_format", {}),
    ("bmp", images.encode(Image.new("RGB", (8, 8)), "BMP"), "invalid_image_format", {}),
    ("tiff", images.encode(Image.new("RGB", (8, 8)), "TIFF"), "invalid_image_format", {}),
    ("svg", b"<svg xmlns='http://www.w3.org/2000/svg' width='8' height='8'/>", "invalid_image_format", {}),
]

# Data-URL and URL defects: (id, url, code).
BAD_URLS: list[tuple[str, str, str]] = [
    ("base64-invalid-chars", "data:image/png;base64,!!!notbase64", "invalid_base64"),
    ("base64-bad-padding", "data:image/png;base64,iVBORw0KGgo", "invalid_base64"),
    ("base64-urlsafe-alphabet", data_url(images.png()).replace("+", "-").replace("/", "_"), "invalid_base64"),
    ("base64-with-line-breaks", data_url(images.png()).replace("AAAA", "AA\nAA", 1), "invalid_base64"),
    ("data-url-not-base64", "data:image/png,%89PNG", "invalid_image_url"),
    ("data-url-without-comma", "data:image/png;base64", "invalid_image_url"),
    ("data-url-empty-payload", "data:image/png;base64,", "invalid_image"),
    ("https-url-remote-off", "https://example.com/cat.png", "remote_images_disabled"),
    ("http-url-remote-off", "http://169.254.169.254/latest/meta-data/", "remote_images_disabled"),
    ("file-url", "file:///etc/passwd", "invalid_image_url"),
    ("ftp-url", "ftp://example.com/cat.png", "invalid_image_url"),
    ("bare-path", "/tmp/cat.png", "invalid_image_url"),
]


def _chat_case(id: str, data: bytes, code: str, settings: dict[str, object]) -> Case:  # noqa: A002
    return Case(f"chat-image-{id}", chat_image(data_url(data)), 400, CHAT_PARAM, code, settings)


def _edit_case(id: str, data: bytes, code: str, settings: dict[str, object]) -> Case:  # noqa: A002
    return Case(f"edit-image-{id}", edit(files=(upload(data),)), 400, "image", code, settings)


CASES = [
    *(_chat_case(*row) for row in BAD_IMAGES),
    *(_edit_case(*row) for row in BAD_IMAGES),
    *(Case(f"chat-url-{id}", chat_image(url), 400, CHAT_PARAM, code) for id, url, code in BAD_URLS),
]
