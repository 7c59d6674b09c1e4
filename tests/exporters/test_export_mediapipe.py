"""What `graft export` writes for TFLite opens unchanged in MediaPipe Tasks' ImageClassifier."""

from __future__ import annotations

import numpy as np
import pytest

mp = pytest.importorskip("mediapipe")

from graft import bundle  # noqa: E402
from graft.exporters import registry  # noqa: E402
from graft.runtime import Classifier  # noqa: E402

TFLITE = [t for t in registry.TARGETS.values() if t.format == "tflite"]


def mediapipe_top1(path, pixels: np.ndarray) -> tuple[list[str], list[str]]:
    """MediaPipe's top-1 label for each image, and the category names it reports, in index order."""
    from mediapipe.tasks.python import BaseOptions, vision

    options = vision.ImageClassifierOptions(base_options=BaseOptions(model_asset_path=str(path)),
                                            max_results=-1)
    with vision.ImageClassifier.create_from_options(options) as classifier:
        results = [classifier.classify(mp.Image(image_format=mp.ImageFormat.SRGB,
                                                data=np.ascontiguousarray(image)))
                   for image in pixels]
    categories = results[0].classifications[0].categories
    names = [c.category_name for c in sorted(categories, key=lambda c: c.index)]
    return [r.classifications[0].categories[0].category_name for r in results], names


@pytest.mark.parametrize("target", TFLITE, ids=lambda t: t.key)
def test_mediapipe_runs_every_exported_tflite_file(exported_bundle, held_out, target):
    manifest = bundle.read_manifest(exported_bundle)
    pixels = held_out[0]  # already at the model's size: MediaPipe resizes nothing
    theirs, names = mediapipe_top1(exported_bundle / "exports" / target.filename, pixels)
    assert names == manifest["labels"]
    clf = Classifier.load(exported_bundle, device="cpu", artifact=target.key)
    ours = [manifest["labels"][i] for i in clf.predict_pixels(pixels).argmax(1)]
    agreement = np.mean([a == b for a, b in zip(ours, theirs)])
    assert agreement >= 0.95
    row = bundle.find_export(manifest, "tflite", target.precision)
    check = row["mediapipe"]
    assert check["graft_resize"] == "stretch" and check["images"] == row["parity"]["images"]
    assert check["top1_agreement"] >= 0.95  # MediaPipe's resize picks the same labels as graft's


def test_mediapipe_resize_is_bilinear_without_antialiasing():
    tf = pytest.importorskip("tensorflow")
    from graft.exporters.mediapipe_check import stretch_like_mediapipe

    image = np.random.default_rng(0).integers(0, 256, (97, 131, 3)).astype(np.uint8)
    expected = tf.image.resize(image[None].astype(np.float32), (40, 50), method="bilinear",
                               antialias=False).numpy()[0]
    assert np.abs(stretch_like_mediapipe(image, 40, 50).astype(float) - np.rint(expected)).max() <= 1


def test_a_crop_contract_is_flagged_for_mediapipe(exported_bundle, tmp_path):
    from models import copy_bundle
    from graft.exporters.mediapipe_check import preprocessing_agreement
    from graft.exporters.parity import CheckImages

    copy = copy_bundle(exported_bundle, tmp_path / "crop")
    manifest = bundle.read_manifest(copy)
    manifest["preprocessing"]["resize"] = "crop"
    bundle.write_manifest(copy, manifest)
    result = preprocessing_agreement(copy / "exports" / "model.int8.tflite", CheckImages(copy))
    assert result["graft_resize"] == "crop" and "region of interest" in result["note"]
