"""An edit's multipart body, read with limits and checked before any image is decoded.

Parsed here rather than declared with FastAPI's ``Form``/``File``: a body that is not
multipart is a 415 (FastAPI would report missing fields), and the parser's own limits on
files and fields turn an oversized form into one clear 400 before its parts are buffered.
"""

from __future__ import annotations

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from diptych.server.errors import APIError
from diptych.server.schemas.images import ImageEditOptions
from diptych.server.services.images import EditUpload
from diptych.settings import Settings

FILE_FIELDS = ("image", "image[]", "mask")
_MAX_FIELDS = 64


async def read_edit_upload(request: Request, settings: Settings) -> EditUpload:
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise APIError(415, "images/edits takes multipart/form-data", code="unsupported_media_type")
    try:
        # One file more than the limit: the count is then refused by name, not by the parser.
        form = await request.form(max_files=settings.max_images_per_request + 1, max_fields=_MAX_FIELDS)
    except StarletteHTTPException as exc:  # Starlette's multipart parser refused the body
        raise APIError(400, f"malformed multipart body: {exc.detail}", code="invalid_multipart") from exc
    try:
        fields = {k: v for k, v in form.multi_items() if k not in FILE_FIELDS}
        for key, value in fields.items():
            if isinstance(value, UploadFile):
                raise APIError(400, f"{key}: unexpected file field", param=key)
        try:
            options = ImageEditOptions.model_validate(fields)
        except ValidationError as exc:
            raise RequestValidationError(exc.errors(), body=fields) from exc
        uploads = [v for k, v in form.multi_items() if k in ("image", "image[]")]
        if not uploads:
            raise APIError(400, "image: at least one image file is required", param="image")
        if any(not isinstance(u, UploadFile) for u in uploads):
            raise APIError(400, "image: must be a file upload", param="image")
        mask = form.get("mask")
        if mask is not None and not isinstance(mask, UploadFile):
            raise APIError(400, "mask: must be a file upload", param="mask")
        images = tuple([await u.read() for u in uploads])  # type: ignore[union-attr]
        return EditUpload(options, images, await mask.read() if mask is not None else None)
    finally:
        await form.close()
