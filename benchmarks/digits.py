"""Real data shipped by an installed package: scikit-learn's handwritten digits as image folders."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def write_digits(root: str | Path, upscale: int = 4, indices: slice | None = None) -> Path:
    """Write the 1797 8x8 digits (0..16 grey levels) as RGB PNGs in class folders 0..9."""
    from PIL import Image
    from sklearn.datasets import load_digits

    root = Path(root)
    digits = load_digits()
    images, targets = digits.images, digits.target
    chosen = range(len(images))[indices or slice(None)]
    for i in chosen:
        pixels = np.clip(images[i] * (255.0 / 16.0), 0, 255).astype(np.uint8)
        image = Image.fromarray(pixels, "L").resize((8 * upscale, 8 * upscale), Image.Resampling.NEAREST)
        folder = root / str(targets[i])
        folder.mkdir(parents=True, exist_ok=True)
        image.convert("RGB").save(folder / f"{i:04d}.png")
    return root


if __name__ == "__main__":
    import sys

    print(write_digits(sys.argv[1]))
