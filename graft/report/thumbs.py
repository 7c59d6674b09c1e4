"""Small inline images: data: URIs for charts and thumbnails of held-out images."""

from __future__ import annotations

import base64
import io
from pathlib import Path

THUMB_PIXELS = 96


def data_uri(data: bytes, mime: str) -> str:
    """``data`` as a base64 ``data:`` URI."""
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def thumbnail(path: str | Path, pixels: int = THUMB_PIXELS) -> tuple[str | None, str]:
    """(a JPEG data URI of the image shrunk to fit ``pixels``, "") or (None, why it cannot be shown).

    Decoding goes through graft's own preprocessing (pixel limit, EXIF
    orientation, any mode to RGB), so the thumbnail shows what the model saw
    before resizing.
    """
    from graft.errors import ImageError
    from graft.runtime.preprocess import open_image, to_rgb

    path = Path(path)
    if not path.is_file():
        return None, "image not found at its recorded path (dataset moved?)"
    try:
        with open_image(path) as image:
            rgb = to_rgb(image)
            rgb.thumbnail((pixels, pixels))
            buffer = io.BytesIO()
            rgb.save(buffer, format="JPEG", quality=80)
    except (ImageError, OSError, ValueError) as exc:
        text = str(exc).strip().splitlines()
        return None, f"cannot read the image ({text[0][:120] if text else type(exc).__name__})"
    return data_uri(buffer.getvalue(), "image/jpeg"), ""
