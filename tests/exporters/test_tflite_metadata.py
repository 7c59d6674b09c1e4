"""Standard TFLite Metadata: stock MediaPipe Tasks runs graft's .tflite files on real photos.

A small photo classifier (tests/web/photo_models.py) is converted to float32,
float16, dynamic-range and full-integer int8 (uint8 input; uint8 or float32
output); each file gets its metadata from graft.exporters.tflite_metadata, then
MediaPipe's ImageClassifier, the LiteRT interpreter and graft's runtime read it.
"""

from __future__ import annotations

import io
import zipfile
from contextlib import contextmanager

import numpy as np
import pytest

pytest.importorskip("tensorflow")
pytest.importorskip("skimage")
pytest.importorskip("ai_edge_litert")
mp = pytest.importorskip("mediapipe")

from web.photo_models import (LABELS, SIZE, VARIANTS, converted, exported, interpreter_scores, manifest,  # noqa: E402
                              resized, sample_images, triptychs)

from graft.errors import BundleError, ExportError  # noqa: E402
from graft.exporters.tflite_metadata import add_metadata, mediapipe_problems  # noqa: E402
from graft.runtime import Classifier  # noqa: E402
from graft.runtime.tflite_metadata import (metadata_buffers, read_labels,  # noqa: E402
                                           read_manifest)


@pytest.fixture(scope="module")
def images():
    return sample_images()


@contextmanager
def mediapipe_classifier(data: bytes):
    from mediapipe.tasks.python import BaseOptions, vision

    options = vision.ImageClassifierOptions(base_options=BaseOptions(model_asset_buffer=data))
    classifier = vision.ImageClassifier.create_from_options(options)
    try:
        yield classifier
    finally:
        classifier.close()


def categories(classifier, pixels: np.ndarray, roi=None) -> list:
    """MediaPipe's categories for one RGB image, in output index order."""
    from mediapipe.tasks.python import vision

    image = mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(pixels))
    options = vision.ImageProcessingOptions(region_of_interest=roi) if roi else None
    result = classifier.classify(image, options)
    return sorted(result.classifications[0].categories, key=lambda c: c.index)


def top1(scored: list) -> str:
    return max(scored, key=lambda c: c.score).category_name


@pytest.mark.parametrize("variant", VARIANTS)
def test_mediapipe_classifies_like_litert_and_graft(variant, images, tmp_path):
    data = exported(variant)
    assert mediapipe_problems(data) == []
    path = tmp_path / f"model.{variant}.tflite"
    path.write_bytes(data)
    graft = [row[0].label for row in Classifier.load(path).predict([a for _, a in images], top_k=1)]
    with mediapipe_classifier(data) as classifier:
        for _, image in images[::3]:
            pixels = resized(image)  # already at the model's size: MediaPipe resizes nothing
            scored = categories(classifier, pixels)
            assert [c.category_name for c in scored] == LABELS
            expected, step = interpreter_scores(data, pixels)
            tolerance = step * 1.001 if step else 1e-4
            assert np.abs(np.array([c.score for c in scored]) - expected).max() <= tolerance
        stock = [top1(categories(classifier, image)) for _, image in images]  # MediaPipe resizes
    differ = [(name, g, s) for (name, _), g, s in zip(images, graft, stock) if g != s]
    assert 1 - len(differ) / len(images) >= 0.95, differ


def test_the_classifier_is_real(images, tmp_path):
    path = tmp_path / "model.tflite"
    path.write_bytes(exported("float32"))
    named = [(name.split("-")[0], a) for name, a in images if name.split("-")[0] in LABELS]
    predicted = [row[0].label for row in Classifier.load(path).predict([a for _, a in named], top_k=1)]
    accuracy = np.mean([p == label for p, (label, _) in zip(predicted, named)])
    assert len(named) == 36 and accuracy >= 0.8


def test_metadata_follows_the_public_schema():
    from mediapipe.tasks.metadata import metadata_schema_py_generated as schema  # a stock reader

    data = exported("int8")
    buffers = metadata_buffers(data)
    assert {"min_runtime_version", "TFLITE_METADATA", "graft.manifest"} <= set(buffers)
    assert buffers["TFLITE_METADATA"][4:8] == b"M001"
    meta = schema.ModelMetadataT.InitFromPackedBuf(buffers["TFLITE_METADATA"], 0)
    assert (meta.name, meta.author, meta.minParserVersion) == (b"photos", b"graft", b"1.0.0")
    assert meta.license and meta.description and meta.version
    assert [f.name for f in meta.associatedFiles] == [b"graft.json"]
    image = meta.subgraphMetadata[0].inputTensorMetadata[0]
    assert image.content.contentPropertiesType == schema.ContentProperties.ImageProperties
    props = image.content.contentProperties
    assert (props.colorSpace, props.defaultSize.width, props.defaultSize.height) == (1, SIZE, SIZE)
    norm = image.processUnits[0]
    assert norm.optionsType == schema.ProcessUnitOptions.NormalizationOptions
    assert (list(norm.options.mean), list(norm.options.std)) == ([0.0], [1.0])
    assert (list(image.stats.min), list(image.stats.max)) == ([0.0], [255.0])
    scores = meta.subgraphMetadata[0].outputTensorMetadata[0]
    assert scores.content.contentPropertiesType == schema.ContentProperties.FeatureProperties
    assert [(f.name, f.type) for f in scores.associatedFiles] == \
        [(b"labels.txt", schema.AssociatedFileType.TENSOR_AXIS_LABELS)]
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        assert [(i.filename, i.compress_type) for i in archive.infolist()] == \
            [("labels.txt", zipfile.ZIP_STORED), ("graft.json", zipfile.ZIP_STORED)]
        assert archive.read("labels.txt") == ("\n".join(LABELS) + "\n").encode()
        assert archive.read("graft.json") == buffers["graft.manifest"]
    assert read_labels(data) == LABELS
    embedded = read_manifest(data, "model.int8.tflite")
    assert embedded["labels"] == LABELS and embedded["export"]["precision"] == "int8"


def test_weights_stay_16_byte_aligned():
    from ai_edge_litert.schema_py_generated import Model

    data = exported("float32")
    model = Model.GetRootAs(data, 0)
    starts = [b._tab.Vector(b._tab.Offset(4)) for b in map(model.Buffers, range(model.BuffersLength()))
              if not b.DataIsNone() and b.DataLength() >= 16]
    assert len(starts) >= 4 and all(start % 16 == 0 for start in starts)


def test_adding_metadata_again_gives_the_same_bytes():
    once = exported("float16")
    assert add_metadata(once, manifest(), {"format": "tflite", "precision": "float16"}) == once


def test_old_layout_still_reads(tmp_path):
    from ai_edge_litert import schema_py_generated as schema
    import flatbuffers
    import json

    tree = schema.ModelT.InitFromPackedBuf(converted("float32"), 0)
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(json.dumps(manifest()).encode(), np.uint8)
    tree.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name, entry.buffer = "graft.manifest", len(tree.buffers) - 1
    tree.metadata.append(entry)
    builder = flatbuffers.Builder(1024)
    builder.Finish(tree.Pack(builder), file_identifier=b"TFL3")
    old = bytes(builder.Output())
    assert read_manifest(old, "old.tflite")["labels"] == LABELS
    assert read_labels(old) is None
    path = tmp_path / "old.tflite"
    path.write_bytes(old)
    assert Classifier.load(path).predict(sample_images()[0][1], top_k=1)[0].label in LABELS


def test_the_manifest_also_reads_from_graft_json():
    from ai_edge_litert import schema_py_generated as schema
    import flatbuffers

    data = exported("dynamic")
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        start = archive.infolist()[0].header_offset
    tree = schema.ModelT.InitFromPackedBuf(data, 0)
    tree.metadata = [m for m in tree.metadata if m.name != b"graft.manifest"]
    builder = flatbuffers.Builder(1024)
    builder.Finish(tree.Pack(builder), file_identifier=b"TFL3")
    only_standard = bytes(builder.Output()) + data[start:]
    assert "graft.manifest" not in metadata_buffers(only_standard)
    assert read_manifest(only_standard)["export"]["precision"] == "dynamic"
    assert read_labels(only_standard) == LABELS


def test_a_rewritten_file_says_its_labels_are_gone():
    from ai_edge_litert import schema_py_generated as schema
    import flatbuffers

    tree = schema.ModelT.InitFromPackedBuf(exported("int8"), 0)  # what any flatbuffer tool does
    builder = flatbuffers.Builder(1024)
    builder.Finish(tree.Pack(builder), file_identifier=b"TFL3")
    rewritten = bytes(builder.Output())
    assert read_manifest(rewritten)["labels"] == LABELS
    with pytest.raises(BundleError, match=r"names 'labels.txt' but .*re-run `graft export`"):
        read_labels(rewritten, "app.tflite")


@pytest.mark.parametrize("damage", ["truncated", "garbage", "zip"])
def test_damaged_files_are_refused_in_one_line(damage):
    data = bytearray(exported("float32"))
    if damage == "truncated":
        data = data[:200]
    elif damage == "garbage":
        data = bytearray(b"GIF89a" + bytes(100))
    else:
        end = data.rindex(b"PK\x01\x02")  # the last central-directory entry
        data[end + 42:end + 46] = b"\xff\xff\xff\x7f"  # its local header offset
    with pytest.raises(BundleError) as error:
        read_manifest(bytes(data), "bad.tflite") if damage != "zip" else read_labels(bytes(data), "bad.tflite")
    assert str(error.value).startswith("bad.tflite: ") and "\n" not in str(error.value)


def test_add_metadata_refuses_what_does_not_match():
    wrong = {**manifest(), "labels": ["a", "b", "c"]}
    with pytest.raises(ExportError, match=r"\[4\] outputs but the manifest has 3 labels"):
        add_metadata(converted("float32"), wrong)
    smaller = manifest()
    smaller["preprocessing"] = {**smaller["preprocessing"], "size": [24, 24]}
    with pytest.raises(ExportError, match=r"input shape \[1, 32, 32, 3\] is not \(N, 24, 24, 3\)"):
        add_metadata(converted("float32"), smaller)
    with pytest.raises(ExportError, match="not a TFLite flatbuffer"):
        add_metadata(b"\x89PNG\r\n\x1a\n" + bytes(64), manifest())
    with pytest.raises(ExportError, match="labels must be a list"):
        add_metadata(converted("float32"), {**manifest(), "labels": "cat"})
    with pytest.raises(ExportError, match="line break"):
        add_metadata(converted("float32"), {**manifest(), "labels": ["a\nb", "c", "d", "e"]})


def test_mediapipe_problems_predict_what_mediapipe_refuses():
    int8_io = add_metadata(converted("int8-int8-io"), manifest())
    problems = mediapipe_problems(int8_io)
    assert problems and all("int8" in p for p in problems)
    with pytest.raises(Exception, match="uint8/float32, got INT8"):
        with mediapipe_classifier(int8_io):
            pass
    unpinned = add_metadata(converted("int8", pin_range=False), manifest())
    assert any("scale 0.98" in p and "raw pixels" in p for p in mediapipe_problems(unpinned))


def crop_box(width: int, height: int) -> tuple[float, float, float, float]:
    """graft's centre crop (runtime.preprocess.resize 'crop') as a normalised region of interest."""
    scale = min(width / SIZE, height / SIZE)
    crop_w, crop_h = round(SIZE * scale), round(SIZE * scale)
    left, top = (width - crop_w) // 2, (height - crop_h) // 2
    return left / width, top / height, (left + crop_w) / width, (top + crop_h) / height


def test_a_crop_model_needs_a_region_of_interest(images, tmp_path):
    """MediaPipe stretches the whole image; graft's centre crop is its region of interest."""
    from mediapipe.tasks.python.components.containers.rect import RectF

    data = exported("float32", resize="crop")
    path = tmp_path / "crop.tflite"
    path.write_bytes(data)
    samples = triptychs() + images
    graft = [row[0].label for row in Classifier.load(path).predict([a for _, a in samples], top_k=1)]
    with mediapipe_classifier(data) as classifier:
        stretched, cropped = [], []
        for _, image in samples:
            left, top, right, bottom = crop_box(image.shape[1], image.shape[0])
            roi = RectF(left=left, top=top, right=right, bottom=bottom)
            cropped.append(top1(categories(classifier, image, roi)))
            stretched.append(top1(categories(classifier, image)))
    centres = [label for label, _ in triptychs()]
    assert graft[:12] == centres  # graft's runtime crops the centre
    assert sum(s == c for s, c in zip(stretched, centres)) <= 4  # stretching sees the sides
    assert np.mean([g == c for g, c in zip(graft, cropped)]) >= 0.95
