"""Feature extraction in `graft build`: onnxruntime (parity-checked) or Keras, cached in shards."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from graft import bundle
from graft.builder import onnx_features
from graft.builder.build import BuildOptions, build_bundle
from graft.builder.shards import ShardStore
from graft.cli import cli


def options(source_model, cache, **overrides):
    values = dict(backbone=str(source_model), epochs=3, lr=1e-2, progress=False, cache_dir=str(cache))
    values.update(overrides)
    return BuildOptions(**values)


def extraction(manifest):
    return manifest["dataset"]["extraction"]


def keras_reference(source_model, manifest, data):
    """The Keras backbone's features for the bundle's usable images, in scan order."""
    from graft.builder.backbones import load_backbone
    from graft.runtime.preprocess import load_pixels

    backbone = load_backbone(str(source_model))
    files = [data / s for s in usable_paths(manifest, data)]
    pixels = np.stack([load_pixels(f, manifest["preprocessing"]) for f in files]).astype(np.float32)
    return backbone, backbone.model.predict(pixels, verbose=0)


def usable_paths(manifest, data):
    from graft.builder.data import scan

    skipped = {row["path"] for row in manifest["dataset"]["skipped"]}
    return [s.rel for s in scan(data) if s.rel not in skipped]


def namespace_rows(cache, backbone, manifest, tag_prefix, data):
    from graft.builder.features import FeatureCache, content_sha

    folder = next((cache / "features" / backbone.cache_key).glob(f"{tag_prefix}*"))
    feature_cache = FeatureCache(cache, backbone.cache_key, manifest["preprocessing"], folder.name)
    keys = [feature_cache.key(content_sha(data / rel)) for rel in usable_paths(manifest, data)]
    return ShardStore(folder).index().rows(keys).take(np.arange(len(keys)))


def test_onnxruntime_extraction_is_parity_checked_recorded_and_cached(tmp_path, dataset, source_model):
    cache = tmp_path / "cache"
    first = build_bundle(dataset, tmp_path / "a", options(source_model, cache, extract="onnxruntime"))
    record = extraction(first)
    assert (record["extractor"], record["engine"]) == ("onnxruntime", "local")
    assert record["requested"] == "onnxruntime"
    parity = record["parity"]
    assert parity["passed"] is True and parity["sample"] == 8 and parity["from"] == "this build"
    assert 0 <= parity["max_abs_diff"] <= parity["tolerance"] <= 1e-3
    assert record["onnx"]["converted"] is True and record["onnx"]["opset"] == onnx_features.OPSET
    assert (record["images"], record["extracted"], record["cache_hits"], record["skipped"]) == (38, 36, 0, 2)
    assert record["shards"] == 1 and first["dataset"]["feature_cache_hits"] == 0
    # Undecodable files are still reported, never fatal.
    reasons = {row["path"]: row["reason"] for row in first["dataset"]["skipped"]}
    assert set(reasons) == {"green/notes.txt", "red/truncated.jpg"}
    assert reasons["green/notes.txt"].startswith("not a recognised image")
    # The cache: one ONNX file per backbone, shards per extractor namespace.
    backbone, reference = keras_reference(source_model, first, dataset)
    model_file, record_file = onnx_features.onnx_paths(cache, backbone.cache_key)
    assert model_file.is_file() and json.loads(record_file.read_text())["parity"]["passed"] is True
    assert bundle.sha256_file(model_file) == record["onnx"]["sha256"]
    features = namespace_rows(cache, backbone, first, "onnxruntime-", dataset)
    np.testing.assert_allclose(features, reference, atol=1e-5)
    # A rebuild converts nothing and extracts nothing; it reports the stored parity check.
    second = build_bundle(dataset, tmp_path / "b", options(source_model, cache, extract="onnxruntime"))
    again = extraction(second)
    assert again["onnx"]["converted"] is False and again["onnx"]["sha256"] == record["onnx"]["sha256"]
    assert (again["cache_hits"], again["extracted"], again["parity"]["from"]) == (36, 0, "cache")
    assert second["training"]["stages"][0]["history"] == first["training"]["stages"][0]["history"]
    assert second["metrics"] == first["metrics"]


def test_keras_and_onnxruntime_features_live_apart_and_agree(tmp_path, dataset, source_model):
    cache = tmp_path / "cache"
    by_keras = build_bundle(dataset, tmp_path / "k", options(source_model, cache, extract="keras"))
    assert extraction(by_keras)["extractor"] == "keras"
    assert extraction(by_keras)["reason"] == "--extract keras"
    assert "parity" not in extraction(by_keras) and "onnx" not in extraction(by_keras)
    by_ort = build_bundle(dataset, tmp_path / "o", options(source_model, cache, extract="onnxruntime"))
    assert extraction(by_ort)["cache_hits"] == 0  # Keras' vectors are not reused for onnxruntime
    from graft.builder.backbones import load_backbone

    backbone = load_backbone(str(source_model))
    np.testing.assert_allclose(namespace_rows(cache, backbone, by_ort, "onnxruntime-", dataset),
                               namespace_rows(cache, backbone, by_keras, "keras", dataset), atol=1e-5)


def test_auto_extracts_a_small_first_build_with_keras_and_onnxruntime_once_converted(
        tmp_path, dataset, source_model):
    cache = tmp_path / "cache"
    small = build_bundle(dataset, tmp_path / "a", options(source_model, cache))
    assert extraction(small)["extractor"] == "keras"
    assert "under 500" in extraction(small)["reason"]
    build_bundle(dataset, tmp_path / "b", options(source_model, cache, extract="onnxruntime"))
    converted = build_bundle(dataset, tmp_path / "c", options(source_model, cache))
    assert extraction(converted)["extractor"] == "onnxruntime"
    assert extraction(converted)["cache_hits"] == 36


def test_a_failed_conversion_falls_back_to_keras_with_one_line(tmp_path, dataset, source_model, monkeypatch):
    import tf2onnx

    def broken(*args, **kwargs):
        raise ValueError("Unsupported ops: Foo\nmore detail on a second line")

    monkeypatch.setattr(tf2onnx.convert, "from_function", broken)
    with pytest.warns(UserWarning) as caught:
        manifest = build_bundle(dataset, tmp_path / "a", options(source_model, tmp_path / "c",
                                                                 extract="onnxruntime"))
    lines = [str(w.message) for w in caught if "Keras instead" in str(w.message)]
    assert lines == ["tf2onnx could not convert the backbone (Unsupported ops: Foo); "
                     "extracting features with Keras instead"]
    assert extraction(manifest)["extractor"] == "keras"
    assert extraction(manifest)["reason"].startswith("tf2onnx could not convert")
    assert manifest["metrics"]["count"] > 0


def test_a_failed_parity_check_falls_back_to_keras(tmp_path, dataset, source_model):
    """A cached ONNX file that computes something else is caught before any vector is stored."""
    from models import make_source_model

    from graft.builder.backbones import load_backbone

    cache = tmp_path / "cache"
    backbone = load_backbone(str(source_model))
    other = load_backbone(str(make_source_model(tmp_path / "other.keras", seed=5)))
    data = onnx_features.convert(other.model, 24)
    model_file, record_file = onnx_features.onnx_paths(cache, backbone.cache_key)
    model_file.parent.mkdir(parents=True)
    model_file.write_bytes(data)
    record_file.write_text(json.dumps({"sha256": bundle.sha256_file(model_file), "opset": 17}))
    with pytest.warns(UserWarning, match=r"onnxruntime features differ from Keras by .* on 8 images; "
                                         r"extracting features with Keras instead"):
        manifest = build_bundle(dataset, tmp_path / "a", options(source_model, cache, extract="onnxruntime"))
    record = extraction(manifest)
    assert record["extractor"] == "keras" and record["parity"]["passed"] is False
    assert record["parity"]["max_abs_diff"] > record["parity"]["tolerance"]
    assert not list((cache / "features" / backbone.cache_key).glob("onnxruntime-*"))


def test_an_edited_source_model_gets_a_new_onnx_file_and_fresh_features(tmp_path, dataset):
    """The same path, new contents: new backbone key, new ONNX file, no cache hit (the Keras
    extractor's case is in test_build_atomic)."""
    from models import make_source_model

    source, cache = tmp_path / "source.keras", tmp_path / "cache"
    make_source_model(source, seed=0)
    first = build_bundle(dataset, tmp_path / "a", options(source, cache, extract="onnxruntime"))
    make_source_model(source, seed=3)  # edited in place
    second = build_bundle(dataset, tmp_path / "b", options(source, cache, extract="onnxruntime"))
    assert extraction(first)["extracted"] == extraction(second)["extracted"] == 36
    assert second["dataset"]["feature_cache_hits"] == 0
    assert extraction(second)["onnx"]["converted"] is True
    assert extraction(second)["onnx"]["sha256"] != extraction(first)["onnx"]["sha256"]


def test_cli_build_options(tmp_path, dataset, source_model):
    runner = CliRunner()
    base = ["build", str(dataset), "--backbone", str(source_model), "--cache-dir", str(tmp_path / "c"),
            "--epochs", "2"]
    result = runner.invoke(cli, [*base, "-o", str(tmp_path / "x"), "--engine", "ray", "--extract", "keras"])
    assert result.exit_code == 2
    assert result.output.strip().splitlines()[-1] == (
        "error: --engine ray extracts features with onnxruntime on TensorFlow-free workers; "
        "drop --extract keras, or use --engine local")
    result = runner.invoke(cli, [*base, "-o", str(tmp_path / "y"), "--address", "127.0.0.1:1"])
    assert result.exit_code == 2
    assert "--address, --num-cpus, --actors and --cpus-per-actor apply to --engine ray" in result.output
    out = tmp_path / "z"
    result = runner.invoke(cli, [*base, "-o", str(out), "--extract", "onnxruntime", "--decode-threads", "1",
                                 "--model-threads", "1"])
    assert result.exit_code == 0, result.output
    assert "features: onnxruntime on local, 36 extracted, 0 from the cache; parity vs Keras: max |diff| " \
        in result.output and "on 8 images (passed)" in result.output
    record = extraction(bundle.read_manifest(out))
    assert record["extractor"] == "onnxruntime" and record["parity"]["passed"] is True
    hyper = bundle.read_manifest(out)["training"]["hyperparameters"]
    assert "extract" not in hyper and hyper["batch_size"] == 32


def test_worker_modules_import_no_tensorflow():
    code = ("import sys, graft.builder.ray_build, graft.builder.features, graft.builder.shards; "
            "print(sorted(m for m in ('tensorflow', 'keras', 'tf2onnx') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_derived_views_go_through_the_same_extractor_and_cache(tmp_path, dataset, source_model):
    """What an augmentation step does: (key, pixels) items for views of the training images."""
    from graft.builder.backbones import load_backbone
    from graft.builder.data import scan
    from graft.builder.extraction import ExtractOptions, extract_features
    from graft.builder.features import Item, read_pixels
    from graft.progress import Progress

    backbone = load_backbone(str(source_model))
    contract = bundle.preprocessing_contract(24, 24)
    features = extract_features(scan(dataset), backbone, contract, tmp_path,
                                ExtractOptions(extract="onnxruntime"), Progress(False))
    assert len(features.samples) == 36 and features.rows.shards == 1

    def flipped(sample, sha):
        return lambda: read_pixels(sample.path, sha, contract)[:, ::-1]

    views = [Item(features.cache.key(sha, view="flip"), flipped(s, sha))
             for s, sha in zip(features.samples[:5], features.content_sha)]
    views.append(Item(features.cache.key("0" * 64, view="flip"), lambda: read_pixels(dataset / "missing.png",
                                                                                       "0" * 64, contract)))
    rows, failed = features.rows_for(views)
    assert list(failed.values()) == ["no such file"] and len(rows) == 5
    pixels = np.stack([view.load() for view in views[:5]]).astype(np.float32)
    np.testing.assert_allclose(rows.take(np.arange(5)), backbone.model.predict(pixels, verbose=0), atol=1e-5)
    assert not np.allclose(rows.take(np.arange(5)), features.rows.take(np.arange(5)))
    shards = len(list(features.cache.dir.glob("*.keys.npy")))
    again, _ = features.rows_for(views[:5])  # cached now: nothing is extracted twice
    assert len(list(features.cache.dir.glob("*.keys.npy"))) == shards
    np.testing.assert_array_equal(again.take(np.arange(5)), rows.take(np.arange(5)))
