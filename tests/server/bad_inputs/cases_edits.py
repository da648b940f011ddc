"""Bad image-edit requests (multipart): broken bodies, wrong parts and names, masks, limits."""

from __future__ import annotations

from tests.server.bad_inputs import images
from tests.server.bad_inputs.table import DROP, EDITS, Case, edit, raw, upload

PNG = images.png()
MULTIPART = "multipart/form-data; boundary=XyZ"


def _e(id: str, request, param: str | None, code: str | None = "invalid_value", status: int = 400,  # noqa: A002
       **settings: object) -> Case:
    return Case(f"edit-{id}", request, status, param, code, dict(settings))


def _part(name: str, value: bytes, filename: str | None = None) -> bytes:
    disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
    return f"--XyZ\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + value + b"\r\n"


CASES = [
    # Not multipart, or multipart that does not parse.
    _e("json-body", raw(EDITS, b'{"prompt": "x"}'), None, "unsupported_media_type", status=415),
    _e("urlencoded-body", raw(EDITS, b"prompt=x", "application/x-www-form-urlencoded"), None,
       "unsupported_media_type", status=415),
    _e("no-content-type", raw(EDITS, b"prompt=x", None), None, "unsupported_media_type", status=415),
    _e("multipart-without-boundary", raw(EDITS, b"garbage", "multipart/form-data"), None, "invalid_multipart"),
    _e("multipart-wrong-boundary", raw(EDITS, _part("prompt", b"x").replace(b"XyZ", b"Other") + b"--Other--\r\n",
                                       MULTIPART), None, "invalid_multipart"),
    # A part cut off (the connection dropped mid-upload) is no part.
    _e("multipart-truncated-in-image", raw(EDITS, _part("prompt", b"x") + _part("image", PNG, "a.png")[:60],
                                           MULTIPART), "image", None),
    _e("multipart-without-final-boundary", raw(EDITS, _part("prompt", b"x") + _part("image", PNG, "a.png"),
                                               MULTIPART), "image", None),
    _e("multipart-part-without-name", raw(EDITS, b'--XyZ\r\nContent-Disposition: form-data\r\n\r\nx\r\n--XyZ--\r\n',
                                          MULTIPART), None, "invalid_multipart"),
    _e("text-field-over-1-mib", edit({"prompt": "x" * (1024 * 1024 + 1)}), None, "invalid_multipart"),
    _e("too-many-fields", edit({f"f{i}": "x" for i in range(70)}), None, "invalid_multipart"),
    _e("too-many-files", edit(files=tuple(upload(PNG, "image[]") for _ in range(12))), None, "invalid_multipart"),
    # The image part.
    _e("image-missing", edit(files=()), "image", None),
    _e("image-as-text-field", edit({"image": "source.png"}, files=()), "image", None),
    _e("images-over-limit", edit(files=tuple(upload(PNG, "image[]") for _ in range(3))), "image", None,
       max_images_per_request=2),
    _e("image-over-body-limit", edit(files=(upload(b"\0" * 300_000),)), None, "body_too_large", status=413,
       max_body_bytes=256 * 1024),
    # Wrong field names.
    _e("field-images", edit(files=(upload(PNG, "images"),)), "images", None),
    _e("field-file", edit(files=(upload(PNG), upload(PNG, "file"))), "file", None),
    _e("field-prompts", edit({"prompt": DROP, "prompts": "x"}), "prompt"),
    _e("field-steps", edit({"steps": "3"}), "steps"),
    _e("prompt-as-file", edit({"prompt": DROP}, files=(upload(PNG), upload(b"make it green", "prompt", "p.txt",
                                                                           "text/plain"))), "prompt", None),
    # The other fields, as form strings.
    _e("prompt-missing", edit({"prompt": DROP}), "prompt"),
    _e("prompt-empty", edit({"prompt": ""}), "prompt"),
    _e("prompt-over-token-limit", edit({"prompt": "word " * 3000}), "prompt", "context_length_exceeded"),
    _e("n-word", edit({"n": "many"}), "n"),
    _e("n-zero", edit({"n": "0"}), "n"),
    _e("n-over-limit", edit({"n": "99"}), "n", None),
    _e("size-word", edit({"size": "huge"}), "size"),
    _e("size-not-multiple-of-16", edit({"size": "100x100"}), "size", "unsupported_size"),
    _e("steps-over-limit", edit({"num_inference_steps": "100000"}), "num_inference_steps", None),
    _e("guidance-word", edit({"guidance_scale": "strong"}), "guidance_scale"),
    _e("seed-negative", edit({"seed": "-3"}), "seed"),
    _e("stream-maybe", edit({"stream": "maybe"}), "stream"),
    _e("output-format-gif", edit({"output_format": "gif"}), "output_format"),
    _e("input-fidelity-max", edit({"input_fidelity": "max"}), "input_fidelity"),
    _e("unknown-model", edit({"model": "gpt-image-9"}), "model", "model_not_found", status=404),
    # The mask.
    _e("mask-wrong-size", edit(files=(upload(images.png((32, 32))), upload(images.png((16, 16)), "mask"))),
       "mask", None),
    _e("mask-wrong-orientation", edit(files=(upload(images.png((48, 32))), upload(images.png((32, 48)), "mask"))),
       "mask", None),
    _e("mask-corrupt", edit(files=(upload(PNG), upload(b"not a mask", "mask"))), "mask", "invalid_image"),
    _e("mask-zero-bytes", edit(files=(upload(PNG), upload(b"", "mask"))), "mask", "invalid_image"),
    _e("mask-as-text-field", edit({"mask": "m.png"}), "mask", None),
]
