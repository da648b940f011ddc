"""Image bytes in and out at the HTTP edge: decode and validate uploads and data URLs, encode results.

Every failure is an :class:`APIError` with a 4xx status that names the parameter.
Decoding and encoding are CPU work: callers run them off the event loop.
"""

from __future__ import annotations

import base64
import binascii
import io
import logging
import re

from PIL import Image, ImageOps, UnidentifiedImageError

from diptych.server.errors import APIError

logger = logging.getLogger(__name__)

# PIL's JPEG opener also yields MPO, the JPEG variant cameras and phones write (a JPEG followed
# by more pictures, such as a depth map or a second view); its first picture is the photograph.
ACCEPTED_FORMATS = ("PNG", "JPEG", "WEBP")
_DATA_URL = re.compile(r"^data:(?P<mime>[\w/+.-]+)?(?P<params>(;[\w-]+=[\w.-]+)*)(?P<b64>;base64)?,(?P<data>.*)$", re.S)
# Formats we refuse, recognised by their first bytes so that the error can name them
# without handing the bytes to PIL's parser for that format.
_OTHER_FORMATS = (
    (b"GIF87a", "GIF"), (b"GIF89a", "GIF"), (b"BM", "BMP"), (b"II*\0", "TIFF"), (b"MM\0*", "TIFF"),
    (b"\0\0\1\0", "ICO"), (b"%PDF", "PDF"), (b"8BPS", "PSD"),
)


def decode_image(data: bytes, *, param: str, max_pixels: int, keep_alpha: bool = False) -> Image.Image:
    """Decode one still PNG/JPEG/WebP image into RGB (RGBA with ``keep_alpha``), honouring EXIF orientation.

    The pixel count is checked from the header before any pixel is decoded, so a
    decompression bomb costs nothing. Anything PIL raises on a hostile file is a 400.
    """
    if not data:
        raise APIError(400, f"{param}: the image is empty (zero bytes)", param=param, code="invalid_image")
    try:
        # Only our formats' parsers ever see the bytes.
        image = Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS)
        width, height = image.size
        if width * height > max_pixels:
            raise _too_large(param, width, height, max_pixels)
        if image.format != "MPO" and getattr(image, "n_frames", 1) > 1:
            raise APIError(400, f"{param}: animated images are not accepted; send a single frame", param=param,
                           code="invalid_image")
        image.load()
        image = ImageOps.exif_transpose(image)
        return _normalise(image, keep_alpha)
    except APIError:
        raise
    except Image.DecompressionBombError as exc:
        # PIL's own bomb guard fired first (past twice its MAX_IMAGE_PIXELS, at open).
        raise APIError(400, f"{param}: the image's dimensions are too large to decode safely ({exc})", param=param,
                       code="image_too_large") from exc
    except UnidentifiedImageError as exc:
        raise _unidentified(param, data) from exc
    except Exception as exc:  # PIL raises many kinds (OSError, SyntaxError, struct.error...) on broken files
        logger.debug("undecodable image for %s", param, exc_info=True)
        raise APIError(400, f"{param}: the image cannot be decoded ({exc})", param=param, code="invalid_image") from exc


def _too_large(param: str, width: int, height: int, max_pixels: int) -> APIError:
    return APIError(400, f"{param}: image of {width}x{height} pixels exceeds the limit of {max_pixels} pixels",
                    param=param, code="image_too_large")


def _unidentified(param: str, data: bytes) -> APIError:
    head = data[:16]
    name = next((n for magic, n in _OTHER_FORMATS if head.startswith(magic)), None)
    if name is None and head[4:8] == b"ftyp":
        name = "HEIF/AVIF"
    if name is None and head.lstrip().startswith((b"<svg", b"<?xml")):
        name = "SVG"
    if name is not None:
        return APIError(400, f"{param}: unsupported image format {name}; use PNG, JPEG or WebP", param=param,
                        code="invalid_image_format")
    return APIError(400, f"{param}: not a PNG, JPEG or WebP image (or a broken one)", param=param,
                    code="invalid_image")


def _normalise(image: Image.Image, keep_alpha: bool) -> Image.Image:
    target = "RGBA" if keep_alpha else "RGB"
    if image.mode == target:
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit greyscale: scale to 8 bits rather than clip.
        image = image.point(lambda v: v / 256).convert("L")
    if keep_alpha:
        return image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (image.mode == "P" and "transparency" in image.info):
        # Composite transparency over white, the convention of image editors.
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def data_url_bytes(url: str, *, param: str) -> bytes:
    """The bytes of a base64 ``data:`` URL."""
    match = _DATA_URL.match(url)
    if match is None or not match.group("b64"):
        raise APIError(400, f"{param}: expected a base64 data URL (data:image/png;base64,...)", param=param,
                       code="invalid_image_url")
    try:
        return base64.b64decode(match.group("data"), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise APIError(400, f"{param}: invalid base64 in the data URL", param=param, code="invalid_base64") from exc


def is_remote_url(url: str) -> bool:
    return url[:8].lower().startswith(("http://", "https://"))


def decode_image_url(url: str, *, param: str, max_pixels: int) -> Image.Image:
    """An image from a chat ``image_url`` that is not remote (remote ones are fetched first, see remote_images)."""
    if url.startswith("data:"):
        return decode_image(data_url_bytes(url, param=param), param=param, max_pixels=max_pixels)
    raise APIError(400, f"{param}: unsupported URL scheme; use a data: URL", param=param, code="invalid_image_url")


def encode_image(image: Image.Image, fmt: str, compression: int | None) -> str:
    """Base64 of the image in ``fmt`` (png, jpeg or webp). ``compression`` is 0–100, OpenAI's meaning."""
    buffer = io.BytesIO()
    if fmt == "png":
        image.save(buffer, format="PNG")
    else:
        if fmt == "jpeg" and image.mode == "RGBA":
            # JPEG has no alpha: composite onto white, as references without alpha are.
            image = Image.alpha_composite(Image.new("RGBA", image.size, (255, 255, 255, 255)), image).convert("RGB")
        # OpenAI's output_compression is a compression level; PIL wants a quality.
        quality = 100 - compression if compression is not None else 95
        image.save(buffer, format="JPEG" if fmt == "jpeg" else "WEBP", quality=max(1, quality))
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def check_image_count(count: int, limit: int, param: str) -> None:
    """Input images per request: checked here only, before any of them is fetched or decoded."""
    if count > limit:
        raise APIError(400, f"{count} images in one request exceed the limit of {limit}", param=param)
