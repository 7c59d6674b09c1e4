"""One preprocessing for training, calibration, verification and serving.

Decode (paths, bytes, PIL images or arrays), apply EXIF orientation, convert to
RGB, resize as the manifest's preprocessing contract says, and return uint8
pixels in 0..255. Normalisation belongs to the model graph, not to this module.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Iterable, Union

import numpy as np
from PIL import ExifTags, Image, UnidentifiedImageError

from graft.errors import ImageError, ImageTooLarge, UnsupportedImage

ImageSource = Union[str, os.PathLike, bytes, bytearray, memoryview, Image.Image, np.ndarray]

DEFAULT_MAX_PIXELS = 50_000_000  # checked from the header, before any pixel is decoded
_RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}
# graft never changes Pillow's global settings (Image.MAX_IMAGE_PIXELS stays the embedding
# application's): its own limit is checked per call, from the header, and Pillow's own bomb
# error (which Pillow raises first, for images over twice its limit) becomes the same error.


_ORIENTATION = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
                4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
                6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
                8: Image.Transpose.ROTATE_90}   # EXIF orientation -> the turn that makes it upright


def describe(source: ImageSource) -> str:
    """A short name for a source, for error messages."""
    if isinstance(source, (str, os.PathLike)):
        return str(source)
    if isinstance(source, (bytes, bytearray, memoryview)):
        return f"<{len(source)} bytes>"
    if isinstance(source, np.ndarray):
        return f"<array {source.shape} {source.dtype}>"
    return f"<{type(source).__name__}>"


def open_image(source: ImageSource, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Open an encoded image lazily (header only) and enforce the pixel limit."""
    if isinstance(source, Image.Image):
        image = source
    else:
        if isinstance(source, (bytes, bytearray, memoryview)):
            if len(source) == 0:
                raise ImageError(f"{describe(source)}: empty input; expected an encoded image")
            stream: object = io.BytesIO(bytes(source))
        elif isinstance(source, (str, os.PathLike)):
            path = Path(source)
            if not path.is_file():
                raise ImageError(f"{path}: no such file")
            if path.stat().st_size == 0:
                raise ImageError(f"{path}: empty file; expected an encoded image")
            stream = str(path)
        else:
            raise ImageError(f"unsupported input type {type(source).__name__}; pass a path, "
                             "bytes, a PIL image or an HxWx3 array")
        try:
            image = Image.open(stream)
        except Image.DecompressionBombError as exc:
            raise ImageTooLarge(f"{describe(source)}: {exc}") from None
        except UnidentifiedImageError:
            raise UnsupportedImage(f"{describe(source)}: not a recognised image "
                             "(JPEG, PNG, BMP, GIF, WebP, TIFF)") from None
        except OSError as exc:
            raise ImageError(f"{describe(source)}: cannot read image ({exc})") from None
    width, height = image.size
    if max_pixels and width * height > max_pixels:
        raise ImageTooLarge(f"{describe(source)}: {width}x{height} = {width * height} pixels "
                            f"exceeds the limit of {max_pixels}")
    return image


def to_rgb(image: Image.Image) -> Image.Image:
    """Apply EXIF orientation and convert any mode (L, P, RGBA, CMYK, 16-bit...) to RGB."""
    image.load()  # some formats (PNG) carry their EXIF after the pixels
    turn = _ORIENTATION.get(image.getexif().get(ExifTags.Base.Orientation, 1))
    if turn is not None:  # as ImageOps.exif_transpose turns it, without its copy of an upright image
        image = image.transpose(turn)
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        pixels = np.asarray(image, dtype=np.float64)
        # 16-bit modes map 0..65535 onto 0..255. Mode "I" (32-bit) does not say
        # its range: Pillow opens 16-bit PNGs as "I", so treat values over 255 as 16-bit.
        if mode.startswith("I;16") or (mode == "I" and pixels.max(initial=0) > 255):
            pixels = pixels / 257.0
        gray = np.clip(np.rint(pixels), 0, 255).astype(np.uint8)
        return Image.fromarray(gray, "L").convert("RGB")
    if mode in ("P", "PA", "LA", "RGBa", "La") or "transparency" in image.info:
        image = image.convert("RGBA")
    return image.convert("RGB")  # alpha is dropped, CMYK/YCbCr/L converted


def resize(image: Image.Image, size: tuple[int, int], mode: str = "stretch",
           interpolation: str = "bilinear") -> Image.Image:
    """Resize to ``size`` = (height, width): stretched, or centre-cropped to the aspect first."""
    height, width = size
    if mode == "crop":
        src_w, src_h = image.size
        scale = min(src_w / width, src_h / height)
        crop_w, crop_h = round(width * scale), round(height * scale)
        left, top = (src_w - crop_w) // 2, (src_h - crop_h) // 2
        image = image.crop((left, top, left + crop_w, top + crop_h))
    if image.size == (width, height):
        return image
    return image.resize((width, height), _RESAMPLE[interpolation])


def _array_to_image(array: np.ndarray) -> Image.Image:
    if array.ndim == 2:
        array = np.stack([array] * 3, axis=-1)
    if array.ndim != 3 or array.shape[-1] not in (1, 3, 4):
        raise ImageError(f"{describe(array)}: expected an HxWx3 RGB array with values 0..255")
    if array.shape[-1] == 1:
        array = np.repeat(array, 3, axis=-1)
    array = array[..., :3]
    if array.dtype != np.uint8:
        array = np.clip(np.rint(array.astype(np.float64)), 0, 255).astype(np.uint8)
    return Image.fromarray(array, "RGB")


def load_pixels(source: ImageSource, contract: dict,
                max_pixels: int | None = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode and resize one image as ``contract`` says; return uint8 (H, W, 3)."""
    height, width = contract["size"]
    if isinstance(source, np.ndarray):
        image = _array_to_image(source)
    else:
        image = open_image(source, max_pixels)
        try:
            if image.format == "JPEG":
                # Decode at a reduced scale when the image is much larger than
                # needed; both sides stay at least as large as the target.
                side = max(height, width)
                image.draft("RGB", (side, side))
            image = to_rgb(image)
            image.load()
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
            raise ImageError(f"{describe(source)}: cannot decode image ({exc})") from None
    image = resize(image, (height, width), contract.get("resize", "stretch"),
                   contract.get("interpolation", "bilinear"))
    return np.asarray(image, dtype=np.uint8)


def load_batch(sources: Iterable[ImageSource], contract: dict,
               max_pixels: int | None = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Preprocess several images into one uint8 (N, H, W, 3) batch; errors propagate."""
    arrays = [load_pixels(source, contract, max_pixels) for source in sources]
    if not arrays:
        height, width = contract["size"]
        return np.zeros((0, height, width, 3), np.uint8)
    return np.stack(arrays)
