"""Support for the report tests: the test bundle's labels, and HTML tables read back as text."""

from __future__ import annotations

import json
from html.parser import HTMLParser
from pathlib import Path

# Labels with HTML special characters (and an already-escaped-looking one): the report must escape them.
RED, GREEN, BLUE = "red <b>&amp;", 'green & "co"', "blue's"
CLASSES = {RED: (200, 30, 30), GREEN: (30, 200, 30), BLUE: (30, 30, 200)}
VAL_SPLIT = TEST_SPLIT = 0.15
MODEL_CARD_SECTIONS = ("Model Details", "Intended Use", "Factors", "Metrics", "Evaluation Data",
                       "Training Data", "Quantitative Analyses", "Ethical Considerations",
                       "Caveats and Recommendations")


def planted_name() -> str:
    """A file name under the red folder that the build's hash split puts in the test split."""
    from graft.builder.data import split_of

    for i in range(10_000):
        name = f"planted_{i}.png"
        if split_of(f"{RED}/{name}", VAL_SPLIT, TEST_SPLIT) == "test":
            return name
    raise AssertionError("no test-split name found")


def test_rows(bundle: Path) -> list[dict]:
    """The test-split rows of splits.json."""
    samples = json.loads((bundle / "splits.json").read_text())["samples"]
    return [row for row in samples if row["split"] == "test"]


test_rows.__test__ = False  # a function for the tests, not a test


class _Page(HTMLParser):
    """Collects tables (by id) as rows of cell texts, <img> attributes and <figure> captions."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.tables: dict[str, list[list[str]]] = {}
        self.images: list[dict] = []
        self.captions: list[str] = []
        self._table = self._row = self._cell = self._caption = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "table" and attrs.get("id"):
            self._table = self.tables.setdefault(attrs["id"], [])
        elif tag == "tr" and self._table is not None:
            self._row = []
            self._table.append(self._row)
        elif tag in ("td", "th") and self._row is not None:
            self._cell = []
        elif tag == "img":
            self.images.append(attrs)
        elif tag == "figcaption":
            self._caption = []
        elif tag == "br" and self._caption is not None:
            self._caption.append("\n")

    def handle_endtag(self, tag):
        if tag == "table":
            self._table = None
        elif tag in ("td", "th") and self._cell is not None and self._row is not None:
            self._row.append(" ".join("".join(self._cell).split()))
            self._cell = None
        elif tag == "figcaption" and self._caption is not None:
            self.captions.append("".join(self._caption))
            self._caption = None

    def handle_data(self, data):
        for part in (self._cell, self._caption):
            if part is not None:
                part.append(data)


def parse_page(text: str) -> _Page:
    page = _Page()
    page.feed(text)
    return page
