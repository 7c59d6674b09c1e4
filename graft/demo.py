"""`graft demo`: knowledge transfer, offline, on real photographs that scikit-image ships.

1. Cut four of scikit-image's surface photographs (brick, grass, gravel, the
   moon) into disjoint 64x64 tiles, one class folder each: every held-out tile
   is pixels the model never saw in training.
2. `graft build` grafts a new head onto EfficientNet-Lite0, frozen, with the
   ImageNet weights that installed with graft.
3. The same split, without transfer: the same head on raw pixels, and the same
   backbone with random weights (which graft refuses: its features are empty).
4. `graft export` writes ONNX float32 and TFLite int8, each checked against
   Keras, and the runtime (no TensorFlow) classifies held-out tiles with both.
"""

from __future__ import annotations

import shutil
import time
import warnings
from pathlib import Path
from typing import Callable

import numpy as np

from graft.errors import GraftError

SURFACES = ("brick", "grass", "gravel", "moon")
TILE = 64


def write_dataset(root: Path) -> int:
    """Class folders of disjoint TILE x TILE PNG tiles of scikit-image's photographs; returns the count."""
    import skimage.data
    from PIL import Image

    marker = root / ".graft-demo"
    if root.exists() and any(root.iterdir()) and not marker.exists():
        raise GraftError(f"{root}: exists and was not made by `graft demo`; refusing to replace it, "
                         "choose another -o")
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    marker.write_text("written by graft demo; `graft demo` replaces this folder\n")
    count = 0
    for name in SURFACES:
        photo = getattr(skimage.data, name)()
        folder = root / name
        folder.mkdir(parents=True)
        for top in range(0, photo.shape[0] - TILE + 1, TILE):
            for left in range(0, photo.shape[1] - TILE + 1, TILE):
                tile = photo[top:top + TILE, left:left + TILE]
                Image.fromarray(tile).save(folder / f"{name}_{top:03d}_{left:03d}.png")
                count += 1
    # One damaged file, to show that bad data is reported and skipped, not fatal.
    (root / "gravel" / "damaged.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    return count


def raw_pixel_baseline(bundle_dir: Path, manifest: dict, size: int = 32) -> float:
    """No transfer: the same head trained on raw size x size pixels, same split; test accuracy."""
    from graft import bundle
    from graft.builder.head import train_head
    from graft.runtime.preprocess import load_pixels

    contract = bundle.preprocessing_contract(size, size)
    labels = manifest["labels"]
    rows = bundle.read_splits(bundle_dir)["samples"]

    def part(split):
        chosen = [r for r in rows if r["split"] == split]
        x = np.stack([load_pixels(r["file"], contract) for r in chosen]).reshape(len(chosen), -1) / 255.0
        return x.astype(np.float32), np.array([labels.index(r["label"]) for r in chosen])

    import keras

    (x_train, y_train), validation, (x_test, y_test) = part("train"), part("val"), part("test")
    hyper = manifest["training"]["hyperparameters"]
    keras.utils.set_random_seed(hyper["seed"])  # as seeded as the build it is compared with
    head, _ = train_head(x_train, y_train, validation, len(labels), epochs=hyper["epochs"],
                         batch_size=hyper["batch_size"], lr=hyper["lr"], dropout=hyper["dropout"],
                         patience=hyper["patience"], min_steps=hyper.get("min_steps", 0))
    return float((head.predict(x_test, verbose=0).argmax(1) == y_test).mean())


def random_backbone_spread(data: Path, out: Path, cache: Path) -> str:
    """No transfer: the same backbone with random weights; graft refuses it and says why."""
    from graft.builder.build import BuildOptions, build_bundle
    from graft.errors import BackboneError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            manifest = build_bundle(data, out, BuildOptions(weights="none", cache_dir=str(cache),
                                                            progress=False, overwrite=True))
    except BackboneError as exc:
        return "refused: " + str(exc).split(", so a head")[0].replace("the frozen ", "")
    return f"test accuracy {manifest['metrics']['accuracy']:.3f}"


def run_demo(out: str | Path, echo: Callable[[str], None] = print) -> dict:
    from graft import bundle
    from graft.builder.build import BuildOptions, build_bundle
    from graft.exporters import registry
    from graft.exporters.export import export_bundle
    from graft.runtime import Classifier

    started = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    data, cache, bundle_dir = out / "data", out / "cache", out / "bundle"
    count = write_dataset(data)
    echo(f"[1/4] cut {count} disjoint {TILE}x{TILE} tiles of scikit-image's photographs "
         f"({', '.join(SURFACES)}) and one damaged file into {data}")

    manifest = build_bundle(data, bundle_dir, BuildOptions(cache_dir=str(cache), overwrite=True))
    metrics, skipped = manifest["metrics"], manifest["dataset"]["skipped"]
    weights = manifest["backbone"]["weights"]
    echo(f"[2/4] built {bundle_dir}: {manifest['backbone']['name']} frozen (ImageNet weights from "
         f"{weights.get('package', weights['source'])}), new head for {len(manifest['labels'])} "
         f"classes; skipped {len(skipped)}: " + "; ".join(f"{r['path']} ({r['reason']})" for r in skipped))

    raw = raw_pixel_baseline(bundle_dir, manifest)
    random = random_backbone_spread(data, out / "no-transfer", cache)
    echo(f"[3/4] held-out accuracy on the same {metrics['count']} test tiles:")
    echo(f"      transfer (ImageNet {manifest['backbone']['name']} + new head)  {metrics['accuracy']:.3f}")
    echo(f"      no transfer: the same head on raw 32x32 pixels             {raw:.3f}")
    echo(f"      no transfer: {manifest['backbone']['name']} with random weights  {random}")

    targets = [registry.TARGETS[("onnx", "float32")], registry.TARGETS[("tflite", "int8")]]
    rows = export_bundle(bundle_dir, targets)
    for row in rows:
        parity = row["parity"]
        low = parity["agreement_interval"][0]
        echo(f"[4/4] exported {bundle_dir / row['path']} ({row['size_bytes'] / 1e6:.1f} MB): agrees with "
             f"Keras on {parity['top1_agreement']:.1%} of all {parity['images']} tiles (95% CI from "
             f"{low:.1%}), accuracy {parity['accuracy']:.3f} on {parity['test_images']} test tiles "
             f"({row['status']})")
    test = bundle.split_rows(bundle_dir, "test")
    samples = list({r["label"]: r for r in reversed(test)}.values())[::-1]  # one per class
    runtimes = {key: Classifier.load(bundle_dir, artifact=key) for key in ("onnx", "tflite:int8")}
    for sample in samples:
        tops = {key: clf.predict(Path(sample["file"]), top_k=1)[0] for key, clf in runtimes.items()}
        answers = "  ".join(f"{key}: {top.label} {top.score:.2f}" for key, top in tops.items())
        echo(f"      {sample['path']:<28} -> {answers}")
    echo(f"done in {time.perf_counter() - started:.0f} s; try: graft predict {bundle_dir} "
         f"{data / 'grass'} --top-k 2 --artifact tflite:int8")
    return bundle.read_manifest(bundle_dir)
