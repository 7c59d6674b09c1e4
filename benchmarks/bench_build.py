"""graft build (features computed once, cached) vs a plain Keras fit that runs the frozen
backbone on every epoch. Same images, same backbone (EfficientNet-Lite0 with its ImageNet
weights, 224 px), 10 epochs.

    python benchmarks/bench_build.py [--images-per-class 100] [--repeat 3]

Target: graft build >= 5x faster (cold feature cache: the first build pays for extraction).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import make_images, median, timed, write_results  # noqa: E402

EPOCHS = 10


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images-per-class", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    import keras
    import numpy as np

    from graft.builder.backbones.efficientnet_lite import build_model
    from graft.builder.data import scan, split_of
    from graft.builder.build import BuildOptions, build_bundle
    from graft.runtime.preprocess import load_batch
    from graft.bundle import preprocessing_contract

    work = Path(tempfile.mkdtemp(prefix="graft-bench-build-"))
    data = make_images(work / "data", classes=4, per_class=args.images_per_class)
    total = 4 * args.images_per_class

    def graft_build():
        cache = work / "cache"
        shutil.rmtree(cache, ignore_errors=True)  # cold: extraction is part of the cost
        build_bundle(data, work / "bundle", BuildOptions(
            backbone="efficientnet_lite0", epochs=EPOCHS, patience=EPOCHS + 1,
            progress=False, cache_dir=str(cache), overwrite=True))

    # The peer: the same split and pixels, decoded up front (its decode time is not counted).
    samples = scan(data)
    labels = sorted({s.label for s in samples})
    contract = preprocessing_contract(224, 224)
    splits = [split_of(s.rel, 0.15, 0.15) for s in samples]
    pixels = load_batch([s.path for s in samples], contract).astype("float32")
    y = np.array([labels.index(s.label) for s in samples])
    train = np.array([s == "train" for s in splits])
    val = np.array([s == "val" for s in splits])

    def keras_fit():
        keras.utils.set_random_seed(0)
        base = build_model("efficientnet_lite0", cache_dir=str(work / "weights"))  # normalisation inside
        base.trainable = False
        inputs = keras.Input((224, 224, 3))
        x = keras.layers.Dropout(0.2)(base(inputs, training=False))
        model = keras.Model(inputs, keras.layers.Dense(len(labels), activation="softmax")(x))
        model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
        model.fit(pixels[train], y[train], validation_data=(pixels[val], y[val]), epochs=EPOCHS,
                  batch_size=32, verbose=0)

    graft_times = timed(graft_build, args.repeat)
    keras_times = timed(keras_fit, args.repeat)
    g, k = median(graft_times), median(keras_times)
    print(f"images: {total} JPEGs 256x256 -> 224 px, EfficientNet-Lite0 (frozen), {EPOCHS} epochs, "
          f"{args.repeat} runs each")
    print(f"graft build (cold feature cache): median {g:.1f} s   runs {[round(t, 1) for t in graft_times]}")
    print(f"keras fit, backbone every epoch : median {k:.1f} s   runs {[round(t, 1) for t in keras_times]}")
    print(f"speed-up: {k / g:.1f}x (target >= 5x)")
    write_results("bench_build", {
        "setup": {"images": total, "backbone": "efficientnet_lite0", "epochs": EPOCHS, "runs": args.repeat},
        "seconds": {"graft_build_cold": round(g, 2), "keras_fit": round(k, 2)},
        "runs": {"graft_build_cold": [round(t, 2) for t in graft_times], "keras_fit": [round(t, 2) for t in keras_times]},
        "speedup": round(k / g, 2), "target": 5.0})
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
