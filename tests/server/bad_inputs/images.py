"""Image files for the bad-input corpus and the normalisation tests: odd, broken and hostile ones.

Everything is built here from a few pixels (no binary fixtures in the repository); where
PIL cannot write what a test needs (a header claiming huge dimensions, 16 bits per RGB
channel), a minimal PNG is assembled chunk by chunk.
"""

from __future__ import annotations

import io
import struct
import zlib

from PIL import Image

ORIENTATION = 0x0112  # the EXIF tag that says how to rotate/flip the stored pixels for display


def encode(image: Image.Image, fmt: str, **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def png(size: tuple[int, int] = (32, 32), colour: tuple[int, int, int] = (0, 0, 255)) -> bytes:
    return encode(Image.new("RGB", size, colour), "PNG")


def jpeg(size: tuple[int, int] = (32, 32), colour: tuple[int, int, int] = (0, 0, 255)) -> bytes:
    return encode(Image.new("RGB", size, colour), "JPEG", quality=90)


def webp(size: tuple[int, int] = (32, 32), colour: tuple[int, int, int] = (0, 0, 255)) -> bytes:
    return encode(Image.new("RGB", size, colour), "WEBP", lossless=True)


# -- PNG assembled by hand -------------------------------------------------------------------
def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def raw_png(width: int, height: int, *, bit_depth: int = 8, colour_type: int = 2, rows: bytes | None = None,
            extra_chunks: tuple[bytes, ...] = ()) -> bytes:
    """A PNG with the given IHDR; ``rows`` is the filtered scanline data (default: a few zero bytes)."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    idat = zlib.compress(rows if rows is not None else b"\0" * 16, 9)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + b"".join(extra_chunks) + _chunk(b"IDAT", idat)
            + _chunk(b"IEND", b""))


def png_header_bomb(width: int = 100_000, height: int = 100_000) -> bytes:
    """A few hundred bytes whose header claims ``width``×``height`` pixels."""
    return raw_png(width, height)


def png_real_bomb(side: int = 8192) -> bytes:
    """A valid 1-bit PNG that decodes to ``side``² pixels (about 200 MB as RGB) from a few kilobytes."""
    return encode(Image.new("1", (side, side), 0), "PNG", optimize=True)


def png_rgb48(size: tuple[int, int], colour16: tuple[int, int, int]) -> bytes:
    """A 16-bit-per-channel RGB PNG (PIL reads it but cannot write it)."""
    width, height = size
    pixel = struct.pack(">HHH", *colour16)
    rows = b"".join(b"\0" + pixel * width for _ in range(height))
    return raw_png(width, height, bit_depth=16, colour_type=2, rows=rows)


def png_ztxt_bomb() -> bytes:
    """A 1×1 PNG carrying a compressed text chunk that inflates to 64 MiB."""
    text = _chunk(b"zTXt", b"Comment\0\0" + zlib.compress(b"A" * (64 << 20), 9))
    return raw_png(1, 1, rows=b"\0\0\0\0", extra_chunks=(text,))


def png_bad_crc() -> bytes:
    data = bytearray(png())
    data[29] ^= 0xFF  # the IHDR chunk's CRC
    return bytes(data)


def png_corrupt_pixels() -> bytes:
    """Valid chunks (CRCs correct) around a deflate stream that is garbage."""
    return raw_png(32, 32).replace(zlib.compress(b"\0" * 16, 9), b"\x78\x9c" + b"\xff" * 30)


def png_zero_width() -> bytes:
    return raw_png(0, 32)


# -- JPEG / WebP surgery --------------------------------------------------------------------------
def jpeg_header_bomb(width: int = 65_000, height: int = 65_000) -> bytes:
    """A small JPEG whose frame header (SOF0) claims ``width``×``height``."""
    data = bytearray(jpeg())
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def jpeg_corrupt_huffman() -> bytes:
    """A JPEG whose Huffman tables are overwritten with garbage (decoding them fails)."""
    data = bytearray(jpeg((64, 64), (10, 200, 30)))
    dht = data.index(b"\xff\xc4")
    length = struct.unpack(">H", data[dht + 2:dht + 4])[0]
    data[dht + 4:dht + 2 + length] = b"\xff" * (length - 2)
    return bytes(data)


def webp_header_bomb() -> bytes:
    """A lossless WebP whose bitstream header claims 16384×16384 pixels."""
    data = bytearray(webp())
    vp8l = data.index(b"VP8L")
    # VP8L header: signature byte 0x2f, then 14 bits width-1 and 14 bits height-1, little endian.
    bits = struct.unpack("<I", data[vp8l + 9:vp8l + 13])[0]
    bits = (bits & ~((1 << 28) - 1)) | 16383 | (16383 << 14)
    data[vp8l + 9:vp8l + 13] = struct.pack("<I", bits)
    return bytes(data)


def truncated(data: bytes, keep: float = 0.5) -> bytes:
    return data[: max(1, int(len(data) * keep))]


# -- images that are valid but not plain 8-bit RGB -----------------------------------------------
def animated(fmt: str, frames: int = 3) -> bytes:
    images = [Image.new("RGB", (32, 32), (60 * i, 0, 0)) for i in range(frames)]
    params: dict[str, object] = {"save_all": True, "append_images": images[1:], "duration": 100, "loop": 0}
    if fmt == "WEBP":
        params["lossless"] = True
    return encode(images[0], fmt, **params)


def cmyk_jpeg(size: tuple[int, int] = (32, 24), cmyk: tuple[int, int, int, int] = (0, 255, 255, 0)) -> bytes:
    return encode(Image.new("CMYK", size, cmyk), "JPEG", quality=95)


def grey16_png(size: tuple[int, int] = (32, 24), value: int = 0x8000) -> bytes:
    return encode(Image.new("I;16", size, value), "PNG")


def with_orientation(image: Image.Image, fmt: str, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    params: dict[str, object] = {"exif": exif.tobytes()}
    if fmt == "WEBP":
        params["lossless"] = True
    return encode(image, fmt, **params)
