"""Shared fixtures: tiny models and generated images; no network."""

from __future__ import annotations

import os
import tempfile

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# Keras reads KERAS_HOME once, at import: point its download cache at a private
# folder so tests fill it themselves and never touch (or depend on) the user's.
os.environ["KERAS_HOME"] = tempfile.mkdtemp(prefix="graft-keras-home-")

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


@pytest.fixture(scope="session")
def source_model(tmp_path_factory):
    from models import make_source_model

    return make_source_model(tmp_path_factory.mktemp("source") / "source.keras")


@pytest.fixture(scope="session")
def dataset(tmp_path_factory):
    """red/green/blue class folders (12 PNGs each) plus a corrupt and a non-image file."""
    from models import make_dataset

    root = make_dataset(tmp_path_factory.mktemp("data") / "colors")
    (root / "red" / "truncated.jpg").write_bytes(b"\xff\xd8\xff\xe0\x00\x10JFIF")
    (root / "green" / "notes.txt").write_text("not an image")
    return root


@pytest.fixture(scope="session")
def built_bundle(tmp_path_factory, dataset, source_model):
    """One bundle built and exported to ONNX, shared by the tests that only read it."""
    from graft.builder.build import BuildOptions, build_bundle
    from graft.exporters.export import export_onnx

    out = tmp_path_factory.mktemp("bundles") / "colors"
    cache = tmp_path_factory.mktemp("cache")
    build_bundle(dataset, out, BuildOptions(backbone=str(source_model), epochs=40, lr=1e-2,
                                            progress=False, cache_dir=str(cache)))
    export_onnx(out)
    return out


@pytest.fixture(scope="module")
def browser():
    """A headless system Chromium driven by Playwright; skipped when either is missing.

    Module-scoped: Playwright's sync API keeps an asyncio loop running in the main
    thread while it is open, which would break later tests that call asyncio.run().
    """
    import browser as support

    playwright_api = pytest.importorskip("playwright.sync_api")
    if support.chromium_path() is None:
        pytest.skip("no Chromium binary (apt-get install chromium, or set GRAFT_CHROMIUM)")
    with playwright_api.sync_playwright() as playwright:
        chromium = support.launch(playwright)
        try:
            yield chromium
        finally:
            chromium.close()
