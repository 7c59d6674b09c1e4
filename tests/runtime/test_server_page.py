"""The page at `/` in headless Chromium: upload or drop an image, read the labels, see errors."""

from __future__ import annotations

import base64
import re

import pytest

from browser import screenshot_path
from models import color_manifest, make_color_bundle, make_color_onnx, solid_image
from server_harness import thread_server

SHADES = ["rouge", "vert", "bleu"]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A repository of two models: colors (versions 1 and 2, 16 px) and shades (24 px, French labels)."""
    root = tmp_path_factory.mktemp("page-repo")
    make_color_bundle(root / "colors" / "1")
    make_color_bundle(root / "colors" / "2")
    make_color_onnx(root / "shades" / "1" / "model.onnx", size=24, manifest=color_manifest(24, SHADES))
    with thread_server(root) as (running, _):
        yield running


@pytest.fixture()
def page(browser, server):
    context = browser.new_context(viewport={"width": 900, "height": 640})
    page = context.new_page()
    page.foreign = []  # requests that left the server: there must be none
    page.on("request", lambda r: None if r.url.startswith((server.url, "data:", "blob:"))
            else page.foreign.append(r.url))
    page.goto(server.url + "/")
    page.wait_for_selector("#info[data-model='colors'][data-version='2']")
    yield page
    assert page.foreign == []
    context.close()


def labels(page) -> list[str]:
    return page.locator("#results .label").all_text_contents()


def test_an_uploaded_red_image_shows_red_first_with_model_details_and_latency(page, tmp_path):
    page.set_input_files("#file", str(solid_image(tmp_path / "red.png", "red")))
    page.wait_for_selector("#results li")
    assert labels(page)[0] == "red" and sorted(labels(page)) == ["blue", "green", "red"]
    first_bar = page.locator("#results li:first-child .bar span").evaluate("e => e.style.width")
    assert float(first_bar.rstrip("%")) > 90
    assert page.locator("#results li:first-child .score").inner_text().endswith("%")
    info = page.locator("#info").inner_text()
    assert "colors" in info and "version 2" in info and "16\u00d716 px" in info
    latency = page.locator("#latency").inner_text()
    assert re.fullmatch(r"red\.png: colors version 2, answered in \d+\.\d ms", latency), latency
    assert float(page.locator("#latency").get_attribute("data-ms")) > 0
    assert page.locator("#error").is_hidden()


def test_an_unreadable_file_shows_the_servers_error(page, tmp_path):
    bad = tmp_path / "notes.png"
    bad.write_bytes(b"plain text, not a picture")
    page.set_input_files("#file", str(bad))
    page.wait_for_selector("#error:not([hidden])")
    assert "not a recognised image (JPEG, PNG, BMP, GIF, WebP, TIFF)" in page.locator("#error").inner_text()
    assert labels(page) == []


def test_a_dropped_image_is_classified(page, tmp_path):
    data = solid_image(tmp_path / "green.png", "green").read_bytes()
    page.evaluate("""([name, b64]) => {
        const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
        const transfer = new DataTransfer();
        transfer.items.add(new File([bytes], name, { type: "image/png" }));
        document.getElementById("drop").dispatchEvent(
            new DragEvent("drop", { dataTransfer: transfer, bubbles: true, cancelable: true }));
    }""", ["green.png", base64.b64encode(data).decode()])
    page.wait_for_selector("#results li")
    assert labels(page)[0] == "green"
    assert page.locator("#latency").inner_text().startswith("green.png: colors version 2")


def test_picking_the_second_model_and_another_version(page, tmp_path):
    assert page.locator("#model option").all_text_contents() == ["colors", "shades"]
    assert page.locator("#version option").all_text_contents() == ["1", "2"]
    page.select_option("#model", "shades")
    page.wait_for_selector("#info[data-model='shades']")
    assert page.locator("#info").get_attribute("data-input") == "24x24"
    assert page.locator("#version option").all_text_contents() == ["1"]
    page.set_input_files("#file", str(solid_image(tmp_path / "blue.jpg", "blue")))
    page.wait_for_selector("#results li")
    assert labels(page)[0] == "bleu" and "24\u00d724 px" in page.locator("#info").inner_text()
    assert page.locator("#latency").inner_text().startswith("blue.jpg: shades version 1")
    page.screenshot(path=str(screenshot_path("serve.png")), full_page=True)
    page.select_option("#model", "colors")  # the chosen image is sent again to the new choice
    page.wait_for_selector("#info[data-model='colors'][data-version='2']")
    page.select_option("#version", "1")
    page.locator("#latency", has_text="blue.jpg: colors version 1").wait_for()
    assert labels(page)[0] == "blue"
