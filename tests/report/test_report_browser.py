"""The report in a real headless Chromium: nothing leaves the page, and the key parts render."""

from __future__ import annotations

import shutil

from browser import screenshot_path
from report_support import BLUE, GREEN, RED

from graft.report import write_report


def test_report_renders_offline_in_chromium(browser, report_bundle, tmp_path):
    copy = shutil.copytree(report_bundle, tmp_path / "colours")
    url = write_report(copy).resolve().as_uri()
    context = browser.new_context(viewport={"width": 1280, "height": 900}, offline=True)
    page = context.new_page()
    requests, failed, problems = [], [], []
    page.on("request", lambda request: requests.append(request.url))
    page.on("requestfailed", lambda request: failed.append(request.url))
    page.on("console", lambda message: problems.append(message.text) if message.type in ("error", "warning")
            else None)
    page.on("pageerror", lambda error: problems.append(str(error)))
    try:
        page.goto(url, wait_until="load")

        # Every request is the page itself or one of its inline data: images.
        assert requests and requests[0] == url
        assert all(r == url or r.startswith("data:") for r in requests), requests
        assert not any(r.startswith(("http:", "https:")) for r in requests)
        assert failed == [] and problems == []   # a blocked fetch would log a CSP error here

        for selector in ("#confusion-matrix", "#training-curves", "#exports-chart"):
            image = page.locator(selector)
            image.scroll_into_view_if_needed()
            assert image.is_visible()
            assert image.evaluate("img => img.complete && img.naturalWidth > 100")
        table = page.locator("#exports-table")
        assert table.is_visible()
        assert table.locator("tbody tr").count() == 2
        assert table.locator("tbody tr").first.locator("td").first.inner_text() == "model.float32.onnx"
        labels = page.locator("#per-class tbody tr td:first-child").all_inner_texts()
        assert labels == sorted([RED, GREEN, BLUE])   # shown as text, not interpreted as markup
        assert page.locator("#per-class b").count() == 0
        assert page.locator("#misclassified figure").count() >= 1
        assert page.locator("#misclassified img").first.evaluate("img => img.naturalWidth > 0")
        page.screenshot(path=str(screenshot_path("report.png")), full_page=True)
    finally:
        context.close()
