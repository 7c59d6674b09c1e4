"""Batch-1 latency of Classifier.predict_pixels on preprocessed input (an EfficientNet-Lite0 bundle
made by graft), against calling the engine directly on the same file: onnxruntime for the float32
ONNX file, LiteRT on every core for the float32 and int8 .tflite files; and Keras model.predict /
model(x).

    python benchmarks/bench_predict.py [--runs 300]

Targets: Classifier overhead <= 10% over raw onnxruntime, and <= 10% over raw LiteRT on every core
with graft's default options.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import bench_bundle, median, write_results  # noqa: E402


def latencies(fn, runs: int, warmup: int = 20) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        out.append((time.perf_counter() - start) * 1000)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--bundle", type=Path, default=None, help="reuse a bundle with an ONNX export")
    args = parser.parse_args()

    import numpy as np
    import onnxruntime as ort

    from graft.runtime import Classifier

    bundle_dir = args.bundle or bench_bundle(Path(tempfile.gettempdir()) / "graft-bench-predict",
                                             [("onnx", "float32"), ("tflite", "float32"), ("tflite", "int8")])
    clf = Classifier.load(bundle_dir, device="cpu")
    pixels = np.random.default_rng(0).integers(0, 256, (1, 224, 224, 3)).astype(np.float32)
    session = ort.InferenceSession(clf.source, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name

    import keras

    model = keras.saving.load_model(Path(bundle_dir) / "model.keras")
    np.testing.assert_allclose(clf.predict_pixels(pixels), session.run(None, {name: pixels})[0], atol=1e-6)

    # Interleave the two ONNX peers in rounds so drift on a shared machine hits both alike.
    rounds, per_round = 10, max(1, args.runs // 10)
    ours, raw = [], []
    for _ in range(rounds):
        ours += latencies(lambda: clf.predict_pixels(pixels), per_round, warmup=5)
        raw += latencies(lambda: session.run(None, {name: pixels}), per_round, warmup=5)
    keras_predict = latencies(lambda: model.predict(pixels, verbose=0), max(30, args.runs // 10), warmup=5)
    keras_call = latencies(lambda: model(pixels, training=False), max(30, args.runs // 10), warmup=5)

    tflite = {precision: tflite_peers(bundle_dir, precision, pixels, args.runs) for precision in ("float32", "int8")}

    o, r = median(ours), median(raw)
    print(f"model: {Path(bundle_dir).name}, 224 px, batch 1, {len(ours)} runs, onnxruntime's default threads")
    print(f"raw onnxruntime session.run     median {r:7.2f} ms")
    print(f"Classifier.predict_pixels       median {o:7.2f} ms   overhead {100 * (o / r - 1):+.1f}% (target <= 10%)")
    for precision, t in tflite.items():
        print(f"tflite {precision:<7}: raw LiteRT, {t['cores']} threads  median {t['raw_all_cores']:7.2f} ms;  "
              f"LiteRT's own default threads {t['raw_default']:7.2f} ms")
        print(f"tflite {precision:<7}: Classifier, defaults     median {t['classifier']:7.2f} ms   overhead "
              f"{100 * t['overhead']:+.1f}% vs every core (target <= 10%)")
    print(f"keras model.predict             median {median(keras_predict):7.2f} ms   "
          f"{median(keras_predict) / o:.1f}x slower than graft")
    print(f"keras model(x)                  median {median(keras_call):7.2f} ms   "
          f"{median(keras_call) / o:.1f}x slower than graft")
    write_results("bench_predict", {
        "setup": {"bundle": Path(bundle_dir).name, "runs": len(ours)},
        "p50_ms": {"classifier": round(o, 3), "onnxruntime": round(r, 3),
                   "keras_predict": round(median(keras_predict), 2), "keras_call": round(median(keras_call), 2)},
        "overhead_vs_onnxruntime": round(o / r - 1, 4), "target_overhead": 0.10,
        "tflite": {p: {k: round(v, 4) if isinstance(v, float) else v for k, v in t.items()}
                   for p, t in tflite.items()}})


def tflite_peers(bundle_dir: Path, precision: str, pixels, runs: int) -> dict:
    """A .tflite file through Classifier with default options, against a raw LiteRT interpreter
    given every core and one left at LiteRT's own default thread count, in interleaved rounds."""
    import numpy as np
    from ai_edge_litert.interpreter import Interpreter

    from graft.runtime import Classifier
    from graft.runtime.engines import allowed_cores
    from graft.runtime.litert import quantize

    clf = Classifier.load(bundle_dir, device="cpu", artifact=f"tflite:{precision}")
    cores = allowed_cores()

    def raw(threads):
        interpreter = Interpreter(model_path=clf.source, num_threads=threads)
        interpreter.allocate_tensors()
        detail, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
        feed = quantize(pixels, detail)

        def call():
            interpreter.set_tensor(detail["index"], feed)
            interpreter.invoke()
            return interpreter.get_tensor(out["index"])
        return call

    if clf.engine.input_dtype.kind != "f":
        pixels = pixels.astype(np.uint8)  # what graft's preprocessing hands a full-integer file
    all_cores, default = raw(cores), raw(None)
    np.testing.assert_array_equal(clf.predict_pixels(pixels).argmax(1), np.asarray(all_cores()).argmax(1))
    rounds, per_round = 10, max(1, runs // 10)
    ours, every, own = [], [], []
    for _ in range(rounds):
        ours += latencies(lambda: clf.predict_pixels(pixels), per_round, warmup=5)
        every += latencies(all_cores, per_round, warmup=5)
        own += latencies(default, per_round, warmup=5)
    c, e = median(ours), median(every)
    return {"cores": cores, "classifier": c, "raw_all_cores": e, "raw_default": median(own),
            "overhead": c / e - 1, "runs": len(ours)}


if __name__ == "__main__":
    main()
