"""Admission before buffering: a request's body is read only once there is room for it.

- **A byte budget for bodies in flight** (``--body-budget-mb``): a body reserves its declared
  size (a chunked one, the body limit) before a byte of it is read; with the budget spent the
  request is answered 503 + Retry-After at once, its body never read. 512 connections x 10
  MiB bodies would otherwise be 5 GiB of buffers.
- **A deadline on the body read** (``--body-timeout-s``): a client that trickles its upload
  gets 408 instead of holding a connection, a budget share and a decode slot for ever.
- **The size limit** while streaming (413), from Content-Length before anything is read.

Multipart uploads are streamed into Starlette's form parser through the same guarded
receive (no second copy of the body), and the form is closed as soon as the file is read,
so its spooled temporary file goes away.
"""

from __future__ import annotations

import asyncio

from digits.serve.inputs import ApiError

TIMEOUT_AT = getattr(asyncio, "timeout_at", None)  # Python 3.11+


class BodyBudget:
    """Bytes of request bodies the server holds at once."""

    def __init__(self, limit: int):
        self.limit, self.used = limit, 0

    def reserve(self, n: int) -> bool:
        if self.used + n > self.limit:
            return False
        self.used += n
        return True

    def release(self, n: int) -> None:
        self.used -= n


def header(scope: dict, name: bytes) -> str | None:
    for k, v in scope["headers"]:
        if k == name:
            return v.decode("latin-1")
    return None


class admitted:  # noqa: N801 - used as ``async with admitted(...)``, like a function
    """Reserve the request's body in ``budget`` (503 when it has no room), for as long as the
    body, or what is made of it, is held. A plain class: contextlib's generator-based
    manager cost more than the rest of admission on the hot path."""

    __slots__ = ("budget", "share")

    def __init__(self, scope: dict, budget: BodyBudget, limit: int):
        declared = header(scope, b"content-length")
        size = int(declared) if declared and declared.isdigit() else None
        if size is not None and size > limit:
            raise ApiError(413, f"The body is {size:,} bytes; the limit is {limit:,} bytes.")
        self.budget, self.share = budget, limit if size is None else size

    async def __aenter__(self):
        if not self.budget.reserve(self.share):
            raise ApiError(503, "The server is receiving as many uploads as it holds at once. Retry shortly.",
                           retry_after=1)

    async def __aexit__(self, *exc):
        self.budget.release(self.share)


def guarded(receive, limit: int, timeout_s: float):
    """``receive`` with the body's size limit (413) and its deadline (408) enforced."""
    deadline = asyncio.get_running_loop().time() + timeout_s  # the loop's clock, as its timers use
    seen = [0]

    async def guarded_receive():
        try:
            if TIMEOUT_AT is not None:  # a timer on the loop, not the task per receive that wait_for makes
                async with TIMEOUT_AT(deadline):
                    message = await receive()
            else:  # Python 3.10
                left = deadline - asyncio.get_running_loop().time()
                message = await asyncio.wait_for(receive(), max(left, 0.001))
        except (asyncio.TimeoutError, TimeoutError):
            raise ApiError(408, f"The body did not arrive within {timeout_s:g} s.") from None
        if message["type"] == "http.request":
            seen[0] += len(message.get("body", b""))
            if seen[0] > limit:
                raise ApiError(413, f"The body is over the {limit:,}-byte limit.")
        return message
    return guarded_receive


async def read_body(receive) -> bytes:
    """The whole body from a (guarded) ``receive``; empty is a 400."""
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ApiError(400, "The client went away before sending the whole body.")
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            break
    body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
    if not body:
        raise ApiError(400, "The body is empty: send an image, or JSON {\"image\": a 28x28 array}.")
    return body


async def multipart_file(scope: dict, receive) -> bytes:
    """The first file of a multipart body, streamed through the form parser (no second copy)."""
    from starlette.requests import Request

    try:
        async with Request(scope, receive).form(max_files=1, max_fields=16) as form:
            files = [v for v in form.values() if hasattr(v, "read")]
            if not files:
                raise ApiError(400, "The multipart body has no file field (send the image as 'file').")
            return await files[0].read()
    except ApiError:
        raise
    except Exception as e:  # noqa: BLE001 - python-multipart's errors: a malformed body
        raise ApiError(400, f"The multipart body cannot be parsed ({e}).") from None
