"""Shared fixtures for the exporter tests: one tiny bundle per test run, exported once to
every registered format x precision, reused by all tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from models import COLOURS, copy_bundle, make_bundle  # noqa: E402


@pytest.fixture(scope="session")
def edge_bundle(tmp_path_factory) -> Path:
    """A freshly built bundle (no exports); copy it before changing it."""
    return make_bundle(tmp_path_factory.mktemp("edge"))


@pytest.fixture(scope="session")
def exported_bundle(edge_bundle, tmp_path_factory) -> Path:
    """The bundle exported once to every registered format x precision (checked against Keras)."""
    from graft.exporters import registry
    from graft.exporters.export import export_bundle
    from graft.exporters.options import ExportOptions

    out = copy_bundle(edge_bundle, tmp_path_factory.mktemp("exported") / "bundle")
    export_bundle(out, list(registry.TARGETS.values()), ExportOptions(calibration_size=30))
    return out


@pytest.fixture(scope="session")
def held_out(edge_bundle):
    """(pixels, labels, Keras probabilities) of the bundle's test split."""
    import numpy as np

    from graft.exporters.parity import CheckImages

    images = CheckImages(edge_bundle)
    pixels = np.concatenate(list(images.batches()))
    return pixels[images.held], images.y[images.held], images.reference()[images.held]


@pytest.fixture()
def colour_pngs(tmp_path) -> dict:
    """One clean solid-colour PNG per label: {label: path}."""
    from PIL import Image

    paths = {}
    for label, rgb in COLOURS.items():
        paths[label] = tmp_path / f"{label}.png"
        Image.new("RGB", (30, 30), rgb).save(paths[label])
    return paths
