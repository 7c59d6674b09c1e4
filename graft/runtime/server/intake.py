"""Taking a request in: its body (size and time limits), its uploads, its client.

* ``read_body``: the body, refused with 413 once it exceeds ``--max-body-mb`` and
  with 408 when it has not fully arrived within ``--body-timeout-s``.
* ``ClientWatch``: notices a client that closes its connection while its request
  waits, so the work it asked for can be dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading

from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request

from graft.runtime.server.errors import BadRequest, ClientGone, PayloadTooLarge, RequestTimeout

MAX_UPLOAD_FILES = 64


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
