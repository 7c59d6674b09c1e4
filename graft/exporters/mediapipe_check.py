"""How a .tflite file fares when MediaPipe Tasks feeds it instead of graft.

MediaPipe's ImageClassifier stretches the whole image to the model's size with
bilinear interpolation and no antialiasing, in uint8; graft's runtime resizes as
the manifest says (stretched or centre-cropped, with Pillow's antialiased
filters). This check runs the exported file on the check's images both ways and
records how often the top-1 agrees, so a bundle whose contract MediaPipe cannot
follow (``resize: crop``) says so in graft.json instead of failing quietly on a device.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

MEDIAPIPE_RESIZE = "stretch, bilinear without antialiasing, uint8"


def stretch_like_mediapipe(pixels: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize with half-pixel centres and no antialiasing (as OpenCV's INTER_LINEAR)."""
    src_h, src_w = pixels.shape[:2]

    def grid(out: int, size: int):
        centre = (np.arange(out) + 0.5) * (size / out) - 0.5
        centre = np.clip(centre, 0, size - 1)
        low = np.floor(centre).astype(int)
        high = np.minimum(low + 1, size - 1)
        return low, high, (centre - low).astype(np.float32)

    y0, y1, wy = grid(height, src_h)
    x0, x1, wx = grid(width, src_w)
    image = pixels.astype(np.float32)
    top = image[y0][:, x0] * (1 - wx)[None, :, None] + image[y0][:, x1] * wx[None, :, None]
    bottom = image[y1][:, x0] * (1 - wx)[None, :, None] + image[y1][:, x1] * wx[None, :, None]
    out = top * (1 - wy)[:, None, None] + bottom * wy[:, None, None]
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def mediapipe_pixels(path: Path, size: list[int]) -> np.ndarray:
    """What MediaPipe would feed the model for an image file (EXIF applied, RGB)."""
    from graft.runtime.preprocess import open_image, to_rgb

    image = to_rgb(open_image(path))
    return stretch_like_mediapipe(np.asarray(image), int(size[0]), int(size[1]))


def preprocessing_agreement(path: Path, images, batch: int = 32) -> dict:
    """Top-1 agreement of the file on a check's images (parity.CheckImages): graft's
    preprocessing vs MediaPipe's."""
    from graft.runtime.engines import open_engine, run_batched
    from graft.stats import wilson

    engine = open_engine(path, device="cpu")
    contract = images.manifest["preprocessing"]
    agree = total = 0
    files = iter(images.files)
    for graft_pixels in images.batches():
        chosen = [next(files) for _ in range(len(graft_pixels))]
        theirs = np.stack([mediapipe_pixels(f, contract["size"]) for f in chosen])
        ours = np.concatenate(run_batched(engine, graft_pixels, batch)).argmax(1)
        other = np.concatenate(run_batched(engine, theirs, batch)).argmax(1)
        agree += int((ours == other).sum())
        total += len(chosen)
    resize = contract.get("resize", "stretch")
    result = {"mediapipe_resize": MEDIAPIPE_RESIZE, "graft_resize": resize, "images": total,
              "top1_agreement": agree / total if total else 1.0,
              "agreement_interval": list(wilson(agree, total))}
    if resize == "crop":
        result["note"] = ("MediaPipe stretches the whole image; apps must pass graft's centre crop as "
                          "the region of interest (docs/deploy.md)")
    return result
