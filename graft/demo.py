"""`graft demo`: the whole flow offline, on real data that scikit-learn ships.

1. Render scikit-learn's handwritten digits (8x8 scans of 1,797 digits) into
   class folders of 32x32 PNGs: digits 5-9 are the user's dataset.
2. Train a small CNN on digits 0-4: the "pretrained" source model, whose
   knowledge graft keeps frozen.
3. `graft build` grafts a new head for digits 5-9 onto the source model's
   frozen features, `graft export` writes a parity-checked ONNX file, and the
   runtime classifies a few held-out images.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Callable

import numpy as np

SIZE = 32
SOURCE_DIGITS = (0, 1, 2, 3, 4)
TARGET_DIGITS = (5, 6, 7, 8, 9)


def digit_images() -> tuple[np.ndarray, np.ndarray]:
    """All scikit-learn digits as uint8 (N, 32, 32) images and their labels."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (digits.images * (255.0 / 16.0)).astype(np.uint8)
    big = np.stack([np.asarray(Image.fromarray(img).resize((SIZE, SIZE), Image.Resampling.BILINEAR))
                    for img in images])
    return big, digits.target


def write_dataset(root: Path, images: np.ndarray, labels: np.ndarray) -> int:
    from PIL import Image

    shutil.rmtree(root, ignore_errors=True)
    count = 0
    for i, (image, label) in enumerate(zip(images, labels)):
        if label in TARGET_DIGITS:
            folder = root / f"digit_{label}"
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image, "L").save(folder / f"{i:04d}.png")
            count += 1
    # One damaged file, to show that bad data is reported and skipped, not fatal.
    (root / "digit_7" / "damaged.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    return count


def train_source_model(path: Path, images: np.ndarray, labels: np.ndarray, seed: int = 0) -> float:
    """A small CNN for digits 0-4, taking RGB 0..255; returns its training accuracy."""
    import keras

    keras.utils.set_random_seed(seed)
    mask = np.isin(labels, SOURCE_DIGITS)
    x = np.repeat(images[mask][..., None], 3, axis=-1).astype(np.float32)
    y = labels[mask]
    inputs = keras.Input((SIZE, SIZE, 3), name="pixels")
    h = keras.layers.Rescaling(1 / 255.0)(inputs)
    h = keras.layers.Conv2D(32, 3, activation="relu", padding="same")(h)
    h = keras.layers.MaxPooling2D()(h)
    h = keras.layers.Conv2D(64, 3, activation="relu", padding="same")(h)
    h = keras.layers.MaxPooling2D()(h)
    h = keras.layers.Flatten()(h)
    h = keras.layers.Dense(128, activation="relu", name="features")(h)
    outputs = keras.layers.Dense(len(SOURCE_DIGITS), activation="softmax")(h)
    model = keras.Model(inputs, outputs, name="digits_0_4")
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    fit = model.fit(x, y, epochs=15, batch_size=32, verbose=0)
    model.save(path)
    return float(fit.history["accuracy"][-1])


def run_demo(out: str | Path, echo: Callable[[str], None] = print) -> dict:
    from graft.builder.train import BuildOptions, build_bundle
    from graft.exporters.onnx import export_onnx
    from graft.runtime import Classifier

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    images, labels = digit_images()
    data = out / "data"
    count = write_dataset(data, images, labels)
    echo(f"[1/4] wrote {count} digit images (5-9, 32x32 PNG) and one damaged file to {data}")

    source = out / "source_digits_0_4.keras"
    accuracy = train_source_model(source, images, labels)
    echo(f"[2/4] trained a source CNN on digits 0-4 (train accuracy {accuracy:.3f}): {source}")

    bundle_dir = out / "bundle"
    options = BuildOptions(backbone=str(source), epochs=200, patience=10, lr=1e-2,
                           cache_dir=str(out / "cache"), overwrite=True)
    manifest = build_bundle(data, bundle_dir, options)
    metrics = manifest["metrics"]
    skipped = manifest["dataset"]["skipped"]
    echo(f"[3/4] built {bundle_dir}: frozen '{manifest['backbone']['cut_layer']}' features, new head "
         f"for {len(manifest['labels'])} classes; test accuracy {metrics['accuracy']:.3f} on "
         f"{metrics['count']} held-out images; skipped {len(skipped)}: "
         + "; ".join(f"{row['path']} ({row['reason']})" for row in skipped))

    row = export_onnx(bundle_dir)
    parity = row["parity"]
    echo(f"[4/4] exported {bundle_dir / row['path']} ({row['size_bytes'] / 1e3:.0f} kB); agrees with "
         f"Keras on {parity['top1_agreement']:.0%} of {parity['images']} test images "
         f"(max |dprob| {parity['max_abs_diff']:.1e})")

    classifier = Classifier.load(bundle_dir)
    import json

    test = [r for r in json.loads((bundle_dir / "splits.json").read_text())["samples"]
            if r["split"] == "test"]
    samples = list({r["label"]: r for r in reversed(test)}.values())[::-1]  # one per class
    for sample in samples:
        top = classifier.predict(Path(sample["file"]), top_k=1)[0]
        echo(f"      {sample['path']:<22} -> {top.label} ({top.score:.3f})")
    echo(f"try: graft predict {bundle_dir} {data / 'digit_9'} --top-k 2")
    return manifest
