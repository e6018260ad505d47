"""Request parsing for `digits serve`: JSON arrays, and images through the same preprocessing
as `digits predict`; every bad input is an :class:`ApiError` with its HTTP status.

JSON bodies are parsed by orjson and checked by a strict, bounded parser of our own (an
object with ``image``, a 28x28 array of numbers, and optionally ``model`` and ``scale``):
pydantic took 28 us on a 28x28 body, json.loads alone 143 us; orjson and the checks, 31 us.

**Scale.** ``"scale": 1`` says the values are 0..1, ``"scale": 255`` that they are 0..255.
Without it the rule is: every value in [0, 1] (up to rounding: 1.0001 at most, clipped to 1)
is 0..1; else every value a whole number in [0, 255] is 0..255; anything else (3.5, a
negative, 0.5 beside 200) is refused with 400 rather than guessed, as dividing 1.0000001
by 255 once silently blanked a digit.
"""

from __future__ import annotations

import numpy as np
import orjson

KEYS = {"image", "model", "scale"}
ROUNDING = 1.0001  # 0..1 values a little over 1 from float rounding: still 0..1


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
                      "description": "28x28, white digit on black, 0..1 or whole numbers 0..255"},
            "model": {"type": "string"},
            "scale": {"type": "integer", "enum": [1, 255], "description": "optional: the values' range"}}}}}},
    "description": "Any image `digits predict` reads, as a raw body or a multipart `file` field, or a JSON "
                   "28x28 array. An image is read as a number written left to right (`?single=true`: one digit). "
                   "`?model=lenet5` answers {model, number, unsure, digits: [{box, prediction, probabilities, "
                   "unsure}], latency_ms}, plus prediction and probabilities when one digit was read; `all` (the "
                   "default) answers {results: [...]}. Probabilities are calibrated (temperature scaling); a digit "
                   "under `?unsure_below=` (0.6) is unsure, a '?' in number. An image upload also gets image28, the "
                   "28x28 image the models saw (its first digit).",
}


def json_input(body: bytes):
    """A JSON body (already under its size cap) -> (model or None, a
    :class:`~digits.preprocess.Found` of the one 28x28 digit in MNIST's format, 0..1)."""
    from digits.preprocess import Found

    try:
        request = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise ApiError(400, "The body is not valid JSON" + nan_hint(body) + ".") from None
    if not isinstance(request, dict):
        raise ApiError(422, 'Send JSON {"image": a 28x28 array of numbers, "model": optional, "scale": 1 or 255}; '
                            "at body: it is not an object.")
    if extra := set(request) - KEYS:
        raise ApiError(422, f'Send JSON {{"image": a 28x28 array, "model", "scale"}}; at {sorted(extra)[0]}: '
                            "Extra inputs are not permitted.")
    model, scale = request.get("model"), request.get("scale")
    if model is not None and not isinstance(model, str):
        raise ApiError(422, "'model' must be a string.")
    image = request.get("image")
    if not (isinstance(image, list) and len(image) == 28 and all(isinstance(r, list) and len(r) == 28 for r in image)):
        raise ApiError(422, "'image' must be a 28x28 array of numbers (28 rows of 28).")
    try:
        a = np.array(image, dtype=np.float32)  # numbers only: strings, nulls and nested lists fail here
    except (TypeError, ValueError):
        raise ApiError(422, "'image' must be a 28x28 array of numbers.") from None
    if not np.isfinite(a).all():
        raise ApiError(422, "'image' must be a 28x28 array of finite numbers (no NaN or infinity).")
    return model, Found([(None, a / _divisor(a, scale))])


def nan_hint(text: bytes) -> str:
    """Python's json.dumps writes NaN and Infinity, which JSON does not have: say so."""
    return " (NaN and Infinity are not JSON: send finite numbers)" if b"NaN" in text or b"Infinity" in text else ""


def _divisor(a: np.ndarray, scale) -> float:
    """What to divide by for 0..1: the explicit ``scale``, or the documented rule (module doc)."""
    if scale is not None:
        if scale not in (1, 255) or isinstance(scale, bool):
            raise ApiError(400, f"'scale' must be 1 (values 0..1) or 255 (values 0..255), not {scale!r}.")
        if a.min() < 0 or a.max() > scale:
            raise ApiError(400, f"'image' has values outside 0..{scale}, the scale it gives.")
        return float(scale)
    if a.min() >= 0 and a.max() <= ROUNDING:
        np.minimum(a, 1.0, out=a)
        return 1.0
    if a.min() >= 0 and a.max() <= 255 and np.array_equal(a, np.round(a)):
        return 255.0
    raise ApiError(400, f"'image' is neither 0..1 nor whole numbers 0..255 (min {a.min():g}, max {a.max():g}): "
                        'say which with "scale": 1 or "scale": 255.')


def image_input(body: bytes, max_pixels: int, single: bool = False, budget_s: float | None = None):
    """Image bytes -> ``digits.preprocess`` (as `digits predict`) -> a :class:`~digits.preprocess.Found`:
    every digit found left to right, and the touching-digit readings a wide one may have. An
    image whose search outlasts ``budget_s`` is a 422, and its decode slot is free again."""
    import time

    from digits.decode import TIME_BUDGET_S, ImageError, TooLarge, Unsupported, decode
    from digits.preprocess import found_in, preprocess_all

    deadline = time.monotonic() + (TIME_BUDGET_S if budget_s is None else budget_s)
    try:
        image = decode(body, max_pixels=max_pixels)  # boxes are given back in the upload's own pixels
        return found_in(*preprocess_all(image.gray, image.rgb, single=single, deadline=deadline), image.to_original)
    except TooLarge as e:
        raise ApiError(413, f"The image {e}.") from None
    except Unsupported as e:
        raise ApiError(415, f"The upload {e}.") from None
    except ImageError as e:
        raise ApiError(422, f"The upload cannot be used: {e}.") from None
