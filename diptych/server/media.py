"""Image bytes in and out at the HTTP edge: decode and validate uploads and data URLs, encode results.

Every failure is an :class:`APIError` with a 4xx status that names the parameter.
Decoding and encoding are CPU work: callers run them off the event loop.
"""

from __future__ import annotations

import base64
import binascii
import io
import re
import warnings

from PIL import Image, ImageOps, UnidentifiedImageError

from diptych.server.errors import APIError

ACCEPTED_FORMATS = frozenset({"PNG", "JPEG", "WEBP"})
_DATA_URL = re.compile(r"^data:(?P<mime>[\w/+.-]+)?(?P<params>(;[\w-]+=[\w.-]+)*)(?P<b64>;base64)?,(?P<data>.*)$", re.S)


def decode_image(data: bytes, *, param: str, max_pixels: int) -> Image.Image:
    """Decode one still PNG/JPEG/WebP image into RGB, honouring EXIF orientation.

    The pixel count is checked from the header before any pixel is decoded, so a
    decompression bomb costs nothing.
    """
    if not data:
        raise APIError(400, f"{param}: the image is empty (zero bytes)", param=param, code="invalid_image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            if image.format not in ACCEPTED_FORMATS:
                raise APIError(
                    400,
                    f"{param}: unsupported image format {image.format}; use PNG, JPEG or WebP",
                    param=param,
                    code="invalid_image_format",
                )
            width, height = image.size
            if width * height > max_pixels:
                raise APIError(
                    400,
                    f"{param}: image of {width}x{height} pixels exceeds the limit of {max_pixels} pixels",
                    param=param,
                    code="image_too_large",
                )
            if getattr(image, "n_frames", 1) > 1:
                raise APIError(400, f"{param}: animated images are not accepted", param=param, code="invalid_image")
            image.load()
            image = ImageOps.exif_transpose(image)
            return _to_rgb(image)
    except APIError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError,
            Image.DecompressionBombWarning) as exc:
        raise APIError(400, f"{param}: the image cannot be decoded ({exc})", param=param, code="invalid_image") from exc


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit greyscale: scale to 8 bits rather than clip.
        image = image.point(lambda v: v / 256).convert("L")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        # Composite transparency over white, the convention of image editors.
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def decode_image_url(url: str, *, param: str, max_pixels: int) -> Image.Image:
    """An image from a chat ``image_url``: ``data:`` URLs only.

    Remote fetching is off: fetching URLs a client names is a server-side request
    forgery risk, and it will come only behind an allowlist.
    """
    if url.startswith("data:"):
        match = _DATA_URL.match(url)
        if match is None or not match.group("b64"):
            raise APIError(400, f"{param}: expected a base64 data URL (data:image/png;base64,...)", param=param,
                           code="invalid_image_url")
        try:
            data = base64.b64decode(match.group("data"), validate=True)
        except (binascii.Error, ValueError) as exc:
            raise APIError(400, f"{param}: invalid base64 in the data URL", param=param,
                           code="invalid_base64") from exc
        return decode_image(data, param=param, max_pixels=max_pixels)
    if url.startswith(("http://", "https://")):
        raise APIError(
            400,
            f"{param}: remote image URLs are disabled on this server; send the image as a data URL",
            param=param,
            code="remote_images_disabled",
        )
    raise APIError(400, f"{param}: unsupported URL scheme; use a data: URL", param=param, code="invalid_image_url")


def encode_image(image: Image.Image, fmt: str, compression: int | None) -> str:
    """Base64 of the image in ``fmt`` (png, jpeg or webp). ``compression`` is 0–100, OpenAI's meaning."""
    buffer = io.BytesIO()
    if fmt == "png":
        image.save(buffer, format="PNG")
    else:
        # OpenAI's output_compression is a compression level; PIL wants a quality.
        quality = 100 - compression if compression is not None else 95
        image.save(buffer, format="JPEG" if fmt == "jpeg" else "WEBP", quality=max(1, quality))
    return base64.b64encode(buffer.getvalue()).decode("ascii")
