"""The benchmark tasks of bench_choose.py: real photographs that scikit-image ships, cut in
different ways and sizes, written as class folders of PNGs. Each writer returns its folder.

Each task is small for training (the user this is for has tens of images per class) but has
enough images that its test split (half of them in bench_choose) holds about 160, so one image
is 0.6 points of held-out accuracy; LFW holds 200 images as it ships (100 tested).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

GRAY_SURFACES = ("brick", "grass", "gravel", "moon", "camera", "coins", "clock", "cell")
COLOUR_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry")


def _photo(name: str) -> np.ndarray:
    import skimage.data

    image = getattr(skimage.data, name)()
    return image if image.ndim == 3 else np.stack([image] * 3, axis=-1)


def _crops(image: np.ndarray, size: int, count: int, rng) -> list[np.ndarray]:
    height, width = image.shape[:2]
    tops, lefts = rng.integers(0, height - size, count), rng.integers(0, width - size, count)
    return [image[t:t + size, l:l + size] for t, l in zip(tops, lefts)]


def _save(root: Path, label: str, images) -> None:
    from PIL import Image

    folder = root / label
    folder.mkdir(parents=True, exist_ok=True)
    for i, pixels in enumerate(images):
        Image.fromarray(np.asarray(pixels, np.uint8)).save(folder / f"{label}_{i:03d}.png")


def _fresh(root: Path) -> bool:
    return not (root.exists() and any(root.iterdir()))


def surfaces_tiny(root: Path) -> Path:
    """Which of eight photographed surfaces: 16x16 crops, 40 per class (a small, hard task)."""
    if _fresh(root):
        rng = np.random.default_rng(1)
        for name in GRAY_SURFACES:
            _save(root, name, _crops(_photo(name), 16, 40, rng))
    return root


def photo_source(root: Path) -> Path:
    """Which of six colour photographs a 40x40 crop comes from, 54 per class."""
    if _fresh(root):
        rng = np.random.default_rng(2)
        for name in COLOUR_PHOTOS:
            _save(root, name, _crops(_photo(name), 40, 54, rng))
    return root


def lfw_faces(root: Path) -> Path:
    """scikit-image's LFW subset as it ships: 25x25 grey faces against non-faces, 100 of each."""
    if _fresh(root):
        import skimage.data

        images = (skimage.data.lfw_subset() * 255).round().astype(np.uint8)
        _save(root, "face", images[:100])
        _save(root, "not_face", images[100:200])
    return root


def orientation(root: Path) -> Path:
    """Upright or upside down: 64x64 crops of the colour photographs, 160 per class."""
    if _fresh(root):
        rng = np.random.default_rng(3)
        crops = [c for name in COLOUR_PHOTOS for c in _crops(_photo(name), 64, 54, rng)]
        order = rng.permutation(len(crops))
        _save(root, "upright", [crops[i] for i in order[:160]])
        _save(root, "upside_down", [crops[i][::-1, ::-1] for i in order[160:320]])
    return root


def exposure(root: Path) -> Path:
    """Under- or over-exposed: 48x48 crops of the grey surfaces, darkened or brightened,
    160 per class (raw pixels suffice: transfer should not be needed)."""
    if _fresh(root):
        rng = np.random.default_rng(4)
        crops = [c.astype(np.float32) for name in GRAY_SURFACES for c in _crops(_photo(name), 48, 40, rng)]
        order = rng.permutation(len(crops))
        _save(root, "dark", [crops[i] * 0.3 for i in order[:160]])
        _save(root, "bright", [np.clip(crops[i] * 0.5 + 127, 0, 255) for i in order[160:320]])
    return root


def write_tiles(root: Path, count: int) -> Path:
    """``count`` disjoint 32x32 tiles of the eight grey surfaces, one class each (the time goal)."""
    if _fresh(root):
        per_class = -(-count // len(GRAY_SURFACES))
        for name in GRAY_SURFACES:
            photo = _photo(name)
            tiles = [photo[t:t + 32, l:l + 32] for t in range(0, photo.shape[0] - 31, 32)
                     for l in range(0, photo.shape[1] - 31, 32)]
            _save(root, name, tiles[:per_class])
    return root


TASKS = {"exposure": exposure, "surfaces_tiny": surfaces_tiny, "photo_source": photo_source,
         "lfw_faces": lfw_faces, "orientation": orientation}
