"""`graft report`: one self-contained HTML report and a model card for a bundle.

``write_report(BUNDLE)`` writes ``BUNDLE/report.html`` (charts and thumbnails
inlined, nothing fetched from anywhere) and ``MODEL_CARD.md`` beside it. The
charts need matplotlib: ``pip install 'graft[report]'``.
"""

from __future__ import annotations

from graft.report.card import model_card
from graft.report.writer import write_report
from graft.report.markdown import model_card_markdown

__all__ = ["model_card", "model_card_markdown", "write_report"]
