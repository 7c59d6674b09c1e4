"""Taking a request in: its body (size and time limits), its uploads, its images, its client.

* ``read_body``: the body, refused with 413 once it exceeds ``--max-body-mb`` and
  with 408 when it has not fully arrived within ``--body-timeout-s``.
* ``decode_images``: the sizes of all images are read from their headers first,
  so one request cannot ask for more than ``--max-request-pixels`` decoded pixels
  in all; the deadline (and the client's presence) is checked between images.
* ``ClientWatch``: notices a client that closes its connection while its request
  waits, so the work it asked for can be dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time

import numpy as np
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request

from graft.errors import GraftError, ImageTooLarge, UnsupportedImage
from graft.runtime.preprocess import open_image
from graft.runtime.server.errors import (BadRequest, ClientGone, DeadlineExceeded, PayloadTooLarge,
                                         RequestTimeout, ServerError, UnsupportedMediaType)
from graft.runtime.server.repository import ModelEntry

MAX_UPLOAD_FILES = 64


def as_server_error(exc: GraftError) -> ServerError:
    """Map runtime errors (bad images) onto HTTP errors."""
    if isinstance(exc, ServerError):
        return exc
    if isinstance(exc, ImageTooLarge):
        return PayloadTooLarge(str(exc))
    if isinstance(exc, UnsupportedImage):
        return UnsupportedMediaType(str(exc))
    return BadRequest(str(exc))


# ------------------------------------------------------------------ the body
async def read_body(request: Request, limit: int, timeout_s: float | None = None) -> bytes:
    """The request body, within ``limit`` bytes and ``timeout_s`` seconds (413 / 408 otherwise)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"request body of {declared} bytes exceeds the limit of {limit} bytes")
    chunks: list[bytes] = []
    try:
        await asyncio.wait_for(_read_chunks(request, limit, chunks), timeout_s)
    except asyncio.TimeoutError:
        received = sum(len(c) for c in chunks)
        raise RequestTimeout(f"the request body did not arrive within {timeout_s:g} s ({received} bytes "
                             "received); send it at once, or raise --body-timeout-s") from None
    except ClientDisconnect:
        raise ClientGone("the client disconnected before the request body was complete") from None
    return b"".join(chunks)


async def _read_chunks(request: Request, limit: int, chunks: list[bytes]) -> None:
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")
        chunks.append(chunk)


async def uploaded_images(request: Request, body: bytes) -> tuple[list[str | None], list[bytes]]:
    """A raw image body, or the files of a multipart/form-data upload."""
    content_type = request.headers.get("content-type", "")
    if not content_type.lower().startswith("multipart/form-data"):
        if not body:
            raise BadRequest("empty request body; send the image bytes, or a multipart upload "
                             "with a file field named 'image'")
        return [None], [body]

    async def replay():
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        form = await Request(request.scope, replay).form(max_files=MAX_UPLOAD_FILES, max_fields=64)
    except HTTPException as exc:
        raise BadRequest(f"malformed multipart upload: {exc.detail}") from None
    except Exception as exc:  # the multipart parser's own errors
        raise BadRequest(f"malformed multipart upload: {exc}") from None
    files = [value for _, value in form.multi_items() if not isinstance(value, str)]
    if not files:
        raise BadRequest("the multipart upload carries no file; send the image as a file field named 'image'")
    return [f.filename for f in files], [await f.read() for f in files]


# ------------------------------------------------------------------ images
def decode_images(entry: ModelEntry, images: list[bytes], max_request_pixels: int | None = None,
                  deadline: float | None = None, gone: threading.Event | None = None) -> np.ndarray:
    """Decode and resize encoded images as the model's contract says (runs in a thread).

    Args:
        entry: the model whose preprocessing contract and per-image pixel limit apply.
        images: the encoded images of one request.
        max_request_pixels: the most pixels (width x height, summed over the images, read
            from their headers before any is decoded); None for no limit.
        deadline: a ``time.monotonic()`` value; decoding stops with 504 once it has passed.
        gone: set when the client has gone away; decoding stops.

    Returns:
        uint8 pixels, (len(images), H, W, 3).
    """
    sizes = [_header_size(entry, data, _where(index, len(images))) for index, data in enumerate(images)]
    total = sum(width * height for width, height in sizes)
    if max_request_pixels and total > max_request_pixels:
        shown = ", ".join(f"{w}x{h}" for w, h in sizes[:4]) + (", ..." if len(sizes) > 4 else "")
        raise PayloadTooLarge(f"the request's {len(images)} image(s) ({shown}) hold {total} pixels, over the "
                              f"per-request limit of {max_request_pixels}; send fewer or smaller images, "
                              "or raise --max-request-pixels")
    arrays = []
    for index, data in enumerate(images):
        if gone is not None and gone.is_set():
            raise ClientGone("the client went away while its images were decoded")
        if deadline is not None and time.monotonic() >= deadline:
            raise DeadlineExceeded(f"model {entry.name!r}: the request passed its deadline while decoding "
                                   f"its images ({index} of {len(images)} decoded); raise --timeout-ms "
                                   "or send fewer images per request")
        arrays.append(_decode(entry, data, _where(index, len(images))))
    return np.stack(arrays)


def _where(index: int, count: int) -> str:
    return f"image {index + 1} of {count}: " if count > 1 else ""


def _header_size(entry: ModelEntry, data: bytes, where: str) -> tuple[int, int]:
    try:
        with open_image(data, entry.classifier.max_pixels) as image:
            return image.size
    except GraftError as exc:
        raise type(as_server_error(exc))(f"{where}{exc}") from None
    except Exception as exc:  # a parser failing on hostile bytes is still bad input
        raise BadRequest(f"{where}cannot read image header ({type(exc).__name__}: {exc})") from None


def _decode(entry: ModelEntry, data: bytes, where: str) -> np.ndarray:
    try:
        return entry.classifier.preprocess([data])[0]
    except GraftError as exc:
        raise type(as_server_error(exc))(f"{where}{exc}") from None
    except Exception as exc:  # a decoder failing on hostile bytes is still bad input
        raise BadRequest(f"{where}cannot decode image ({type(exc).__name__}: {exc})") from None


# ------------------------------------------------------------------ the client
class ClientWatch:
    """Watches for the client closing its connection once its body has been read.

    ``run(awaitable)`` waits for the work unless the client leaves first; then the
    work is cancelled (a queued batch item leaves the queue) and ``ClientGone`` is
    raised. ``gone`` is set for code in threads (the image decoder checks it).
    """

    def __init__(self) -> None:
        self.gone = threading.Event()
        self._task: asyncio.Task | None = None

    def start(self, request: Request) -> None:
        """Begin watching; call only after the whole body has been received."""
        self._task = asyncio.get_running_loop().create_task(self._watch(request))

    async def _watch(self, request: Request) -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass
        self.gone.set()

    async def run(self, awaitable):
        """The result of ``awaitable``, or ``ClientGone`` when the client leaves first."""
        work = asyncio.ensure_future(awaitable)
        if self._task is None:
            return await work
        try:
            await asyncio.wait({work, self._task}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            work.cancel()
            raise
        if work.done():
            return work.result()
        work.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await work  # a decode in a thread finishes its current image first
        raise ClientGone("the client closed the connection before the answer was ready")

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
