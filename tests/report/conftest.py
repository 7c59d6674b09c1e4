"""One real bundle for the report tests: built by `graft build`, exported to ONNX float32 and
int8, verified (with speed). Its labels carry HTML special characters, and one test image is
a blue picture filed under the red label, so the model gets it wrong for real."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from report_support import BLUE, CLASSES, GREEN, RED, TEST_SPLIT, VAL_SPLIT, planted_name  # noqa: E402


@pytest.fixture(scope="session")
def report_bundle(tmp_path_factory) -> Path:
    """The built, exported and verified bundle; tests copy it before changing it."""
    from models import make_dataset, make_source_model
    from PIL import Image

    from graft.builder.build import BuildOptions, build_bundle
    from graft.errors import CheckFailed
    from graft.exporters import registry
    from graft.exporters.export import export_bundle
    from graft.exporters.options import ExportOptions
    from graft.exporters.verify import verify_bundle

    root = tmp_path_factory.mktemp("report")
    data = make_dataset(root / "data", per_class=14, classes=CLASSES)
    Image.new("RGB", (40, 48), CLASSES[BLUE]).save(data / RED / planted_name())  # mislabelled
    (data / GREEN / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0\x00\x10JFIF")     # skipped
    source = make_source_model(root / "source.keras")
    out = root / "colours"
    build_bundle(data, out, BuildOptions(backbone=str(source), epochs=40, lr=1e-2, progress=False,
                                         cache_dir=str(root / "cache"), val_split=VAL_SPLIT,
                                         test_split=TEST_SPLIT))
    targets = [registry.TARGETS[("onnx", "float32")], registry.TARGETS[("onnx", "int8")]]
    try:
        export_bundle(out, targets, ExportOptions(calibration_size=20))
    except CheckFailed:
        pass  # a file that breaks its budget is still recorded (flagged); the report shows it
    verify_bundle(out, speed=True)
    return out
