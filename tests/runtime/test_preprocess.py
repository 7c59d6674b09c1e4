import io

import numpy as np
import pytest
from PIL import Image

from graft.bundle import preprocessing_contract
from graft.errors import ImageError, ImageTooLarge
from graft.runtime.preprocess import load_batch, load_pixels, open_image

CONTRACT = preprocessing_contract(8, 8)


def encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "BMP", "GIF", "WEBP", "TIFF"])
def test_formats_decode_to_rgb_uint8(fmt):
    data = encode(Image.new("RGB", (20, 10), (200, 30, 30)), fmt)
    pixels = load_pixels(data, CONTRACT)
    assert pixels.shape == (8, 8, 3) and pixels.dtype == np.uint8
    assert pixels[..., 0].mean() > 150 and pixels[..., 1].mean() < 80


@pytest.mark.parametrize("mode,value,expected", [
    ("L", 128, (128, 128, 128)),
    ("RGBA", (10, 200, 30, 0), (10, 200, 30)),       # alpha dropped, colour kept
    ("LA", (77, 255), (77, 77, 77)),
    ("CMYK", (0, 255, 255, 0), (255, 0, 0)),         # pure cyan-free: red
    ("I;16", 65535, (255, 255, 255)),                # 16-bit range mapped onto 8-bit
    ("I", 32896, (128, 128, 128)),
])
def test_modes_become_rgb(mode, value, expected):
    pixels = load_pixels(Image.new(mode, (4, 4), value), CONTRACT)
    assert tuple(int(v) for v in pixels[0, 0]) == pytest.approx(expected, abs=1)


def test_paletted_png_with_transparency():
    image = Image.new("P", (4, 4), 1)
    image.putpalette([0, 0, 0, 0, 0, 255] + [0] * 762)
    data = encode(image, "PNG", transparency=0)
    assert tuple(load_pixels(data, CONTRACT)[0, 0]) == (0, 0, 255)


def test_exif_orientation_is_applied():
    image = Image.new("RGB", (40, 20), (0, 0, 0))
    image.paste((255, 255, 255), (0, 0, 20, 20))  # left half white
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    data = encode(image, "JPEG", exif=exif.tobytes(), quality=95)
    pixels = load_pixels(data, preprocessing_contract(40, 20))
    # After rotation the white half is at the top.
    assert pixels[:15].mean() > 200 and pixels[25:].mean() < 50


def test_crop_mode_keeps_aspect():
    image = Image.new("RGB", (30, 10), (255, 0, 0))
    image.paste((0, 255, 0), (10, 0, 20, 10))  # green centre square
    pixels = load_pixels(image, preprocessing_contract(4, 4, resize="crop"))
    assert pixels[..., 1].min() > 200 and pixels[..., 0].max() < 60


@pytest.mark.parametrize("data,message", [
    (b"", "empty input"),
    (b"definitely not an image", "not a recognised image"),
    (b"\x89PNG\r\n\x1a\n" + b"\x00" * 20, "not a recognised image|cannot"),
])
def test_bad_bytes_raise_image_error(data, message):
    with pytest.raises(ImageError, match=message):
        load_pixels(data, CONTRACT)


def test_truncated_jpeg_raises_image_error():
    data = encode(Image.new("RGB", (64, 64), (1, 2, 3)), "JPEG")
    with pytest.raises(ImageError):
        load_pixels(data[: len(data) // 2], CONTRACT)


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(ImageError, match="no such file"):
        load_pixels(tmp_path / "nope.png", CONTRACT)
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(ImageError, match="empty file"):
        load_pixels(tmp_path / "empty.png", CONTRACT)


def test_pixel_limit_is_checked_from_the_header_before_decoding():
    data = encode(Image.new("L", (3000, 3000)), "PNG")
    image = open_image(data, max_pixels=None)
    assert image.size == (3000, 3000)
    with pytest.raises(ImageTooLarge, match="exceeds the limit of 1000000"):
        load_pixels(data, CONTRACT, max_pixels=1_000_000)


def test_arrays_are_accepted_and_resized():
    gray = np.full((10, 12), 100, np.uint8)
    assert load_pixels(gray, CONTRACT).shape == (8, 8, 3)
    floats = np.full((8, 8, 3), 254.6, np.float32)
    assert load_pixels(floats, CONTRACT).max() == 255
    with pytest.raises(ImageError, match="HxWx3"):
        load_pixels(np.zeros((2, 2, 2, 2)), CONTRACT)


def test_large_jpeg_uses_draft_and_still_hits_exact_size():
    data = encode(Image.new("RGB", (1600, 1200), (10, 200, 10)), "JPEG")
    pixels = load_batch([data, data], preprocessing_contract(32, 32))
    assert pixels.shape == (2, 32, 32, 3)
    assert pixels[..., 1].mean() > 180


def test_dark_16_bit_images_stay_dark():
    pixels = load_pixels(Image.new("I;16", (4, 4), 200), CONTRACT)
    assert int(pixels.max()) <= 1  # 200 of 65535, not 200 of 255
