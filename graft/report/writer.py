"""Writing the report: the HTML page and MODEL_CARD.md beside it, both atomically."""

from __future__ import annotations

from pathlib import Path

from graft.report.html import CARD_NAME, REPORT_NAME, page


def write_report(bundle_dir: str | Path, output: str | Path | None = None) -> Path:
    """Write the bundle's HTML report and MODEL_CARD.md beside it; return the HTML path.

    Args:
        bundle_dir: a graft bundle (a directory with graft.json).
        output: the HTML file to write (a directory means ``DIR/report.html``);
            default ``BUNDLE/report.html``.

    Returns:
        The path of the written HTML file. Both files are written atomically.

    Raises:
        BundleError: ``bundle_dir`` is not a readable bundle.
        GraftError: matplotlib is missing (``pip install 'graft[report]'``).
    """
    from graft.bundle import atomic_write_bytes, read_manifest
    from graft.report.markdown import model_card_markdown
    from graft.report.plots import require_matplotlib
    from graft.report.sections import render_sections

    bundle_dir = Path(bundle_dir)
    manifest = read_manifest(bundle_dir)
    require_matplotlib()
    output = Path(output) if output is not None else bundle_dir / REPORT_NAME
    if output.is_dir():
        output = output / REPORT_NAME
    document = page(manifest, render_sections(bundle_dir, manifest))
    atomic_write_bytes(output, document.encode("utf-8"))
    atomic_write_bytes(output.parent / CARD_NAME, model_card_markdown(manifest).encode("utf-8"))
    return output
