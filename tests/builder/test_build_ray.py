"""`graft build --engine ray` on a local Ray (num_cpus=2): the same model as the local engine."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from graft.builder.build import BuildOptions, build_bundle

ray = pytest.importorskip("ray")
pytest.importorskip("ray.data")


def options(source_model, cache, **overrides):
    values = dict(backbone=str(source_model), epochs=6, lr=1e-2, progress=False, cache_dir=str(cache),
                  extract="onnxruntime", seed=4)
    values.update(overrides)
    return BuildOptions(**values)


def test_an_unreachable_address_fails_fast_with_one_line(tmp_path, dataset, source_model):
    """Before TensorFlow is even imported; in a fresh process, so no Ray is running."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed once the socket is: nothing answers there
    started = time.perf_counter()
    command = [sys.executable, "-m", "graft", "build", str(dataset), "-o", str(tmp_path / "b"),
               "--backbone", str(source_model), "--engine", "ray", "--address", f"127.0.0.1:{port}"]
    out = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert time.perf_counter() - started < 30
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        f"error: cannot reach a Ray cluster at 127.0.0.1:{port} (Connection refused); "
        "check --address, or leave it out to start a local Ray"]
    assert not (tmp_path / "b").exists()


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


def test_ray_engine_builds_the_same_model_as_the_local_engine(local_ray, tmp_path, dataset, source_model):
    import keras

    from graft.builder.backbones import load_backbone
    from graft.builder.features import FeatureCache, content_sha
    from graft.builder.shards import ShardStore

    local = build_bundle(dataset, tmp_path / "local", options(source_model, tmp_path / "c-local"))
    remote = build_bundle(dataset, tmp_path / "ray", options(source_model, tmp_path / "c-ray", engine="ray",
                                                             actors=1, decode_threads=1))
    record = remote["dataset"]["extraction"]
    assert (record["engine"], record["extractor"], record["extracted"]) == ("ray", "onnxruntime", 36)
    assert record["parity"]["passed"] is True
    assert record["ray"]["tensorflow_in_workers"] is False and record["ray"]["workers_seen"] == 1
    assert remote["dataset"]["skipped"] == local["dataset"]["skipped"]
    # Same features within 1e-5 (each engine's own cache) ...
    backbone = load_backbone(str(source_model))
    contract = local["preprocessing"]
    features = []
    for cache in (tmp_path / "c-local", tmp_path / "c-ray"):
        folder = next((cache / "features" / backbone.cache_key).glob("onnxruntime-*"))
        keys = [FeatureCache(cache, backbone.cache_key, contract, folder.name).key(content_sha(dataset / p))
                for p in sorted(r["path"] for r in _rows(tmp_path / "local"))]
        features.append(ShardStore(folder).index().rows(keys).take(np.arange(len(keys))))
    np.testing.assert_allclose(features[0], features[1], atol=1e-5)
    # ... and the same head with the same seed.
    assert remote["training"]["stages"][0]["history"] == local["training"]["stages"][0]["history"]
    assert remote["metrics"] == local["metrics"]
    heads = [keras.saving.load_model(tmp_path / name / "model.keras").get_layer("probs").get_weights()
             for name in ("local", "ray")]
    for a, b in zip(*heads):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_ray_workers_never_import_tensorflow(local_ray):
    """The actor class, run by Ray Data itself: its process has no TensorFlow, the driver does."""
    import ray.data
    import tensorflow  # noqa: F401  (the driver has it, as a build's driver does)

    from graft.builder.ray_build import FeatureWorker

    def modules(batch):
        heavy = [m for m in ("tensorflow", "keras", "tf2onnx") if m in sys.modules]
        return {"pid": np.array([os.getpid()]), "heavy": np.array([",".join(heavy)])}

    class Probe(FeatureWorker):
        def __init__(self):  # no model needed to look at sys.modules
            pass

        def __call__(self, batch):
            return modules(batch)

    out = ray.data.from_items([{"x": 1}]).map_batches(Probe, batch_format="numpy",
                                                      compute=ray.data.ActorPoolStrategy(size=1)).take_all()
    assert out[0]["heavy"] == "" and out[0]["pid"] != os.getpid()
    assert "tensorflow" in sys.modules  # the driver, unlike its workers


def _rows(bundle_dir):
    from graft import bundle

    return bundle.read_splits(bundle_dir)["samples"]
