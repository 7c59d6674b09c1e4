"""graft's int8 .tflite (uint8 I/O) classifies in headless Chromium through MediaPipe Tasks for the web.

The npm package @mediapipe/tasks-vision (tests/web/package.json; install it with
``npm ci --prefix tests/web``) and its WASM files are served by a local HTTP server
with the page and the test's files: nothing comes from a CDN.
"""

from __future__ import annotations

import functools
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tensorflow")
pytest.importorskip("skimage")
pytest.importorskip("ai_edge_litert")

from web.photo_models import LABELS, exported, interpreter_scores, resized, sample_images, triptychs  # noqa: E402

from graft.runtime import Classifier  # noqa: E402

WEB = Path(__file__).parent
PACKAGE = WEB / "node_modules" / "@mediapipe" / "tasks-vision"


class _Handler(SimpleHTTPRequestHandler):
    extensions_map = {**SimpleHTTPRequestHandler.extensions_map, ".mjs": "text/javascript",
                      ".js": "text/javascript", ".wasm": "application/wasm"}

    def log_message(self, *args) -> None:  # keep the test output clean
        pass


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """(base URL, folder it serves): the page and the package, plus the files a test adds."""
    if not (PACKAGE / "wasm").is_dir():
        pytest.skip("@mediapipe/tasks-vision is not installed: run `npm ci --prefix tests/web`")
    root = tmp_path_factory.mktemp("site")
    (root / "index.html").symlink_to(WEB / "index.html")
    (root / "node_modules").symlink_to(WEB / "node_modules", target_is_directory=True)
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Handler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", root
    finally:
        server.shutdown()
        server.server_close()


def save_png(root: Path, name: str, pixels: np.ndarray) -> str:
    from PIL import Image

    (root / "images").mkdir(exist_ok=True)
    Image.fromarray(pixels).save(root / "images" / f"{name}.png")
    return f"images/{name}.png"


def test_chromium_classifies_like_graft(site, browser):
    from browser import screenshot_path

    base, root = site
    for name in ("model.int8.tflite", "crop.int8.tflite"):
        data = exported("int8", resize="crop" if name.startswith("crop") else "stretch")
        (root / name).write_bytes(data)
    images = [(name, save_png(root, name, pixels)) for name, pixels in sample_images()]
    graft = [row[0].label for row in
             Classifier.load(root / "model.int8.tflite").predict([root / url for _, url in images], top_k=1)]

    page = browser.new_page(viewport={"width": 1180, "height": 1300})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(f"{base}/index.html")
    page.wait_for_function("window.pageReady === true", timeout=30_000)

    def classify(model: str, url: str, roi: dict | None = None) -> list[dict]:
        return page.evaluate("([m, u, r]) => window.classify(m, u, r)", [model, url, roi])

    browser_top = []
    for _, url in images:
        scored = classify("model.int8.tflite", url)
        assert [c["name"] for c in scored] == LABELS, errors
        browser_top.append(max(scored, key=lambda c: c["score"])["name"])
    differ = [(name, g, b) for (name, _), g, b in zip(images, graft, browser_top) if g != b]
    assert 1 - len(differ) / len(images) >= 0.95, differ

    # At the model's size nothing is resized: the browser's scores are LiteRT's.
    data = (root / "model.int8.tflite").read_bytes()
    for name, pixels in sample_images()[:6]:
        pixels = resized(pixels)
        scored = classify("model.int8.tflite", save_png(root, f"{name}-small", pixels))
        expected, step = interpreter_scores(data, pixels)
        assert np.abs(np.array([c["score"] for c in scored]) - expected).max() <= step * 1.001

    # A model trained on centre crops: the page passes graft's crop as regionOfInterest.
    for centre, pixels in triptychs()[::3]:
        height, width, _ = pixels.shape
        left = (width - height) // 2 / width
        roi = {"left": left, "top": 0.0, "right": 1.0 - left, "bottom": 1.0}
        scored = classify("crop.int8.tflite", save_png(root, f"triptych-{centre}", pixels), roi)
        assert max(scored, key=lambda c: c["score"])["name"] == centre
    assert not errors, errors
    page.screenshot(path=str(screenshot_path("mediapipe_web.png")), full_page=True)
    page.close()
