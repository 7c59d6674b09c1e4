"""Decoding a request's images under its limits: the server's process, or an instance's.

* ``decode_images``: the sizes of all images are read from their headers first,
  so one request cannot ask for more than ``--max-request-pixels`` decoded pixels
  in all; the deadline (and the client's presence) is checked between images.
* ``as_server_error``: runtime errors (bad images) as the HTTP errors they answer.

It imports no web framework, so an instance's worker process can use it.
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING

import numpy as np

from graft.errors import GraftError, ImageTooLarge, UnsupportedImage
from graft.runtime.preprocess import open_image
from graft.runtime.server.errors import (BadRequest, ClientGone, DeadlineExceeded, PayloadTooLarge,
                                         ServerError, UnsupportedMediaType)

if TYPE_CHECKING:  # anything with ``name`` and ``classifier`` will do (an instance's worker has no entry)
    from graft.runtime.server.repository import ModelEntry


def as_server_error(exc: GraftError) -> ServerError:
    """Map runtime errors (bad images) onto HTTP errors."""
    if isinstance(exc, ServerError):
        return exc
    if isinstance(exc, ImageTooLarge):
        return PayloadTooLarge(str(exc))
    if isinstance(exc, UnsupportedImage):
        return UnsupportedMediaType(str(exc))
    return BadRequest(str(exc))


def decode_images(entry: "ModelEntry", images: list[bytes], max_request_pixels: int | None = None,
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


def _header_size(entry: "ModelEntry", data: bytes, where: str) -> tuple[int, int]:
    try:
        with open_image(data, entry.classifier.max_pixels) as image:
            return image.size
    except GraftError as exc:
        raise type(as_server_error(exc))(f"{where}{exc}") from None
    except Exception as exc:  # a parser failing on hostile bytes is still bad input
        raise BadRequest(f"{where}cannot read image header ({type(exc).__name__}: {exc})") from None


def _decode(entry: "ModelEntry", data: bytes, where: str) -> np.ndarray:
    try:
        return entry.classifier.preprocess([data])[0]
    except GraftError as exc:
        raise type(as_server_error(exc))(f"{where}{exc}") from None
    except Exception as exc:  # a decoder failing on hostile bytes is still bad input
        raise BadRequest(f"{where}cannot decode image ({type(exc).__name__}: {exc})") from None
