"""Shared fixtures: tiny models and generated images; no network."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from models import LABELS, make_color_bundle, make_color_onnx, solid_image  # noqa: E402


@pytest.fixture(scope="session")
def color_bundle(tmp_path_factory):
    """A bundle (graft.json + exports/model.onnx) classifying red/green/blue, 16x16 input."""
    return make_color_bundle(tmp_path_factory.mktemp("color") / "bundle")


@pytest.fixture(scope="session")
def color_onnx(tmp_path_factory):
    """A single self-describing .onnx file (manifest in metadata_props)."""
    return make_color_onnx(tmp_path_factory.mktemp("color-onnx") / "colors.onnx")


@pytest.fixture()
def color_images(tmp_path):
    """One solid image per label, as JPEG, PNG and BMP; returns {label: path}."""
    suffix = {"red": "jpg", "green": "png", "blue": "bmp"}
    return {c: solid_image(tmp_path / f"{c}.{suffix[c]}", c) for c in LABELS}
