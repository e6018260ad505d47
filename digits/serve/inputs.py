"""Request parsing for `digits serve`: bodies under a size cap, multipart files, JSON arrays,
and images through the same preprocessing as `digits predict`; every bad input is an
:class:`ApiError` with its HTTP status."""

from __future__ import annotations

from typing import Annotated

import numpy as np
from fastapi import Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError

Row = Annotated[list[float], Field(min_length=28, max_length=28)]


class ArrayBody(BaseModel):
    """POST /v1/predict's JSON body: one 28x28 array in MNIST's format, and optionally the model."""
    model_config = ConfigDict(extra="forbid")
    image: Annotated[list[Row], Field(min_length=28, max_length=28)]
    model: str | None = None


class ApiError(Exception):
    def __init__(self, status: int, message: str, retry_after: int | None = None):
        super().__init__(message)
        self.status, self.retry_after = status, retry_after


PREDICT_DOC = {
    "requestBody": {"required": True, "content": {
        "image/png": {"schema": {"type": "string", "format": "binary"}},
        "multipart/form-data": {"schema": {"type": "object", "properties": {"file": {"type": "string",
                                                                                      "format": "binary"}}}},
        "application/json": {"schema": {"type": "object", "properties": {
            "image": {"type": "array", "items": {"type": "array", "items": {"type": "number"}},
                      "description": "28x28, white digit on black, 0..1 or 0..255"},
            "model": {"type": "string"}}}}}},
    "description": "Any image `digits predict` reads, as a raw body or a multipart `file` field, or a JSON "
                   "28x28 array. An image is read as a number written left to right (`?single=true`: one digit). "
                   "`?model=lenet5` answers {model, number, unsure, digits: [{box, prediction, probabilities, "
                   "unsure}], latency_ms}, plus prediction and probabilities when one digit was read; `all` (the "
                   "default) answers {results: [...]}. Probabilities are calibrated (temperature scaling); a digit "
                   "under `?unsure_below=` (0.6) is unsure, a '?' in number. An image upload also gets image28, the "
                   "28x28 image the models saw (its first digit).",
}


async def read_body(request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"The body is {int(declared):,} bytes; the limit is {limit:,} bytes.")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"The body is over the {limit:,}-byte limit.")
        chunks.append(chunk)
    body = b"".join(chunks)
    if not body:
        raise ApiError(400, "The body is empty: send an image, or JSON {\"image\": a 28x28 array}.")
    return body


async def multipart_file(request: Request, body: bytes) -> bytes:
    async def replay():
        return {"type": "http.request", "body": body, "more_body": False}
    try:
        form = await Request(request.scope, replay).form()
    except Exception as e:  # noqa: BLE001
        raise ApiError(400, f"The multipart body cannot be parsed ({e}).") from None
    files = [v for v in form.values() if hasattr(v, "read")]
    if not files:
        raise ApiError(400, "The multipart body has no file field (send the image as 'file').")
    return await files[0].read()


def json_input(body: bytes):
    """A JSON body (already under its size cap), validated by :class:`ArrayBody` straight from
    the bytes -> (model or None, a :class:`~digits.preprocess.Found` of the one 28x28 digit:
    MNIST's format already, white on black, 0..1 or 0..255)."""
    from digits.preprocess import Found

    try:
        request = ArrayBody.model_validate_json(body)
    except ValidationError as e:
        first = e.errors()[0]
        if first["type"] == "json_invalid":
            raise ApiError(400, "The body is not valid JSON.") from None
        where = ".".join(map(str, first["loc"])) or "body"
        raise ApiError(422, f"Send JSON {{\"image\": a 28x28 array of numbers, \"model\": optional}}; at {where}: "
                            f"{first['msg']}.") from None
    a = np.asarray(request.image, dtype=np.float32)  # 28x28: the model checked the shape
    if not np.isfinite(a).all():
        raise ApiError(422, "'image' must be a 28x28 array of finite numbers (no NaN or infinity).")
    return request.model, Found([(None, np.clip(a / 255.0 if a.max() > 1.0 else a, 0.0, 1.0))])


def image_input(body: bytes, max_pixels: int, single: bool = False, budget_s: float | None = None):
    """Image bytes -> ``digits.preprocess`` (as `digits predict`) -> a :class:`~digits.preprocess.Found`:
    every digit found left to right, and the touching-digit readings a wide one may have. An
    image whose search outlasts ``budget_s`` is a 422, and its decode slot is free again."""
    import time

    from digits.decode import TIME_BUDGET_S, ImageError, TooLarge, Unsupported, load_image
    from digits.preprocess import found_in, preprocess_all

    deadline = time.monotonic() + (TIME_BUDGET_S if budget_s is None else budget_s)
    try:
        return found_in(*preprocess_all(*load_image(body, max_pixels=max_pixels), single=single, deadline=deadline))
    except TooLarge as e:
        raise ApiError(413, f"The image {e}.") from None
    except Unsupported as e:
        raise ApiError(415, f"The upload {e}.") from None
    except ImageError as e:
        raise ApiError(422, f"The upload cannot be used: {e}.") from None
