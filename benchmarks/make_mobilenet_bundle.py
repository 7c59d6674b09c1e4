"""A MobileNetV2 bundle at 224 px trained by graft on real data (scikit-learn's digits).

No ImageNet download is possible offline, so the source model's knowledge comes
from a MobileNetV2 (random init) trained here on one part of the digits; graft
then grafts a new head onto its frozen features with the other, disjoint part.

    python benchmarks/make_mobilenet_bundle.py WORKDIR [--epochs 4]
    -> WORKDIR/source.keras, WORKDIR/digits/ (graft's data), WORKDIR/bundle/
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from digits import write_digits  # noqa: E402

SOURCE_IMAGES = 600   # digits 0..599 train the source model; 600.. are graft's dataset


def source_model(size: int = 224):
    """MobileNetV2 (random init) on 0..255 pixels with a 10-digit head, built flat so that
    graft's default cut (the last pooling layer) finds the pooled features."""
    import keras

    inputs = keras.Input((size, size, 3), name="image")
    scaled = keras.layers.Rescaling(1 / 127.5, offset=-1.0, name="normalise")(inputs)
    base = keras.applications.MobileNetV2(include_top=False, weights=None, input_tensor=scaled,
                                          pooling="avg")
    outputs = keras.layers.Dense(10, activation="softmax", name="digit")(base.output)
    return keras.Model(inputs, outputs, name="mobilenet_v2_digits")


def train_source(workdir: Path, epochs: int, size: int = 224) -> Path:
    import keras

    from graft.bundle import preprocessing_contract
    from graft.runtime.preprocess import load_pixels

    folder = write_digits(workdir / "source-digits", indices=slice(0, SOURCE_IMAGES))
    contract = preprocessing_contract(size, size)
    paths = sorted(folder.glob("*/*.png"))
    x = np.stack([load_pixels(p, contract) for p in paths]).astype(np.float32)
    y = np.array([int(p.parent.name) for p in paths])
    keras.utils.set_random_seed(0)
    model = source_model(size)
    model.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x, y, batch_size=32, epochs=epochs, shuffle=True, verbose=2)
    recalibrate_batchnorm(model, x)
    print(f"source model accuracy on its training digits (inference mode): "
          f"{(model.predict(x, verbose=0).argmax(1) == y).mean():.4f}")
    path = workdir / "source.keras"
    model.save(path)
    return path


def recalibrate_batchnorm(model, x, passes: int = 3, batch: int = 50) -> None:
    """Re-estimate BatchNorm moving statistics (MobileNetV2's momentum 0.999 barely moves in a
    few short epochs, which leaves inference-mode features meaningless)."""
    import keras

    layers = [l for l in model._flatten_layers() if isinstance(l, keras.layers.BatchNormalization)]
    for layer in layers:
        layer.momentum = 0.9
    rng = np.random.default_rng(0)
    for _ in range(passes):
        shuffled = x[rng.permutation(len(x))]  # mixed classes in every batch
        for i in range(0, len(x), batch):
            model(shuffled[i:i + batch], training=True)
    for layer in layers:
        layer.momentum = 0.999


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workdir", type=Path)
    parser.add_argument("--epochs", type=int, default=4)
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    source = args.workdir / "source.keras"
    if not source.is_file():  # reuse a source model trained by an earlier run
        source = train_source(args.workdir, args.epochs)
    data = write_digits(args.workdir / "digits", indices=slice(SOURCE_IMAGES, None))
    from graft.builder.build import BuildOptions, build_bundle

    manifest = build_bundle(data, args.workdir / "bundle",
                            BuildOptions(backbone=str(source), epochs=60, patience=8, progress=False,
                                         cache_dir=str(args.workdir / "cache"), overwrite=True))
    print(f"bundle: {args.workdir / 'bundle'}  test accuracy {manifest['metrics']['accuracy']:.4f} "
          f"on {manifest['metrics']['count']} images")


if __name__ == "__main__":
    main()
