"""The report's charts as PNG bytes, drawn with matplotlib's Agg canvas (no pyplot, no display).

Text that comes from a bundle (labels, names) is drawn with ``parse_math=False``,
so a label such as ``$5 bill`` is shown as written.
"""

from __future__ import annotations

import io
import warnings

from graft.errors import GraftError

MAX_TICK_CHARS = 28
SPARSE_ABOVE = 30  # labels; more than this and zero cells of the confusion matrix stay blank
FORMAT_COLOURS = {"onnx": "#1f77b4", "tflite": "#ff7f0e"}
PRECISION_MARKERS = {"float32": "o", "float16": "s", "dynamic": "^", "int8": "D"}
PLAIN = {"parse_math": False}


def require_matplotlib():
    """The ``matplotlib.figure`` module, or a GraftError saying how to install it."""
    try:
        from matplotlib import figure
    except ImportError:
        raise GraftError("the report needs matplotlib, which is not installed; "
                         "install it with: pip install 'graft[report]'") from None
    return figure


def short(text: str, limit: int = MAX_TICK_CHARS) -> str:
    """``text`` cut to ``limit`` characters with an ellipsis."""
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _png(fig, dpi: int = 110) -> bytes:
    buffer = io.BytesIO()
    with warnings.catch_warnings():  # a label in a script the font lacks is drawn as boxes; the tables have it
        warnings.filterwarnings("ignore", message="Glyph .* missing from")
        fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight", metadata={"Software": None})
    return buffer.getvalue()


def training_png(stages: list[dict]) -> bytes:
    """Loss and accuracy per epoch: one row per stage, validation dashed, best epoch marked."""
    figure = require_matplotlib()
    fig = figure.Figure(figsize=(10, 3.1 * len(stages)), layout="constrained")
    axes = fig.subplots(len(stages), 2, squeeze=False)
    for row, stage in zip(axes, stages):
        history = stage["history"]
        for ax, metric in zip(row, ("loss", "accuracy")):
            for key, style, name in ((metric, "-", "train"), (f"val_{metric}", "--", "validation")):
                values = history.get(key)
                if values:
                    epochs = range(1, len(values) + 1)
                    ax.plot(epochs, [float("nan") if v is None else v for v in values], style,
                            marker="o", markersize=3, label=name)
            best = stage.get("best_epoch")
            if isinstance(best, int) and best > 0:
                ax.axvline(best, color="grey", linestyle=":", linewidth=1, label=f"best epoch ({best})")
            ax.set_title(f"{stage['title']}: {metric}", fontsize=10, **PLAIN)
            ax.set_xlabel("epoch")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
            ax.xaxis.get_major_locator().set_params(integer=True)
    return _png(fig)


def confusion_png(labels: list[str], matrix: list[list[int]]) -> bytes:
    """A heat map of the confusion matrix (rows true, columns predicted), cells annotated.

    Above ``SPARSE_ABOVE`` labels, zero cells are left blank (and the image is drawn
    at a lower resolution) to keep the chart readable and quick to draw.
    """
    figure = require_matplotlib()
    n = len(labels)
    side = min(40.0, max(3.6, 0.55 * n + 2.2))
    font = max(4, min(9, int((side - 2.2) / max(n, 1) * 72 * 0.25)))  # a quarter of a cell's height
    fig = figure.Figure(figsize=(side + 1, side), layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(matrix, cmap="Blues", vmin=0)
    peak = max((max(r) for r in matrix if r), default=0)
    for i, row in enumerate(matrix):
        for j, value in enumerate(row):
            if value == 0 and n > SPARSE_ABOVE:
                continue
            colour = "white" if peak and value > peak / 2 else "black"
            ax.text(j, i, str(value), ha="center", va="center", fontsize=font, color=colour)
    names = [short(label) for label in labels]
    turn = n > 3 or max(map(len, names), default=0) > 6
    ax.set_xticks(range(n), labels=names, rotation=45 if turn else 0, ha="right" if turn else "center",
                  rotation_mode="anchor", fontsize=font, **PLAIN)
    ax.set_yticks(range(n), labels=names, fontsize=font, **PLAIN)
    ax.set_xlabel("predicted label")
    ax.set_ylabel("true label")
    fig.colorbar(image, ax=ax, shrink=0.8, label="images")
    return _png(fig, 110 if n <= SPARSE_ABOVE else 80)


def exports_png(rows: list[dict], keras_accuracy: float | None) -> bytes | None:
    """Accuracy against file size, marker area ~ batch-32 throughput; None without checked rows.

    Colour is the format, marker shape the precision; every point is labelled
    ``format:precision`` (labels that would overlap are stacked downwards).
    """
    points = [r for r in rows if r["accuracy"] is not None and r["size_bytes"]]
    if not points:
        return None
    figure = require_matplotlib()
    fig = figure.Figure(figsize=(8, 4.8), layout="constrained")
    ax = fig.subplots()
    fastest = max((r["throughput"] or 0 for r in points), default=0)
    for r in points:
        flagged = r["status"] == "flagged"
        ax.scatter(r["size_bytes"] / 1e6, r["accuracy"] * 100, alpha=0.6,
                   s=60 + 600 * r["throughput"] / fastest if r["throughput"] and fastest else 60,
                   color=FORMAT_COLOURS.get(r["format"], "#7f7f7f"),
                   marker=PRECISION_MARKERS.get(r["precision"], "o"),
                   edgecolors="#d62728" if flagged else "black", linewidths=2 if flagged else 0.6,
                   hatch=None if r["throughput"] else "////")
    if keras_accuracy is not None:
        ax.axhline(keras_accuracy * 100, color="grey", linestyle="--", linewidth=1)
    sizes = [r["size_bytes"] / 1e6 for r in points]
    if max(sizes) / min(sizes) > 8:
        ax.set_xscale("log")
    ax.margins(x=0.3)
    values = [r["accuracy"] * 100 for r in points] + ([keras_accuracy * 100] if keras_accuracy is not None else [])
    ax.set_ylim(max(0.0, min(values) - 5), min(101.0, max(values) + 5))
    _label_points(fig, ax, points)
    _legend(ax, points, keras_accuracy is not None)
    ax.set_xlabel("file size (MB)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("accuracy vs size; marker area ~ batch-32 throughput (hatched: speed not measured; "
                 "red edge: flagged)", fontsize=9)
    ax.grid(alpha=0.3)
    return _png(fig)


def _label_points(fig, ax, points: list[dict]) -> None:
    """Annotate each point with format:precision, moving a label down until it overlaps no other."""
    fig.draw_without_rendering()  # fixes the axis limits, so data map to display pixels
    scale = fig.dpi / 72  # display pixels per typographic point
    placed: list[tuple[float, float, float, float]] = []
    for r in sorted(points, key=lambda r: (-r["accuracy"], r["size_bytes"])):
        tag = f"{r['format']}:{r['precision']}"
        x, y = ax.transData.transform((r["size_bytes"] / 1e6, r["accuracy"] * 100))
        width, height, dy = 5.0 * len(tag) * scale, 10.5 * scale, 6.0
        while any(x + 7 * scale < bx + bw and bx < x + 7 * scale + width
                  and y + dy * scale < by + bh and by < y + dy * scale + height
                  for bx, by, bw, bh in placed) and dy > -400:
            dy -= 10.5
        placed.append((x + 7 * scale, y + dy * scale, width, height))
        ax.annotate(tag, (r["size_bytes"] / 1e6, r["accuracy"] * 100), xytext=(7, dy),
                    textcoords="offset points", fontsize=8, **PLAIN)


def _legend(ax, points: list[dict], keras: bool) -> None:
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], marker="o", linestyle="", color=FORMAT_COLOURS.get(f, "#7f7f7f"), label=f)
               for f in dict.fromkeys(r["format"] for r in points)]
    handles += [Line2D([], [], marker=PRECISION_MARKERS.get(p, "o"), linestyle="", color="#555", label=p)
                for p in dict.fromkeys(r["precision"] for r in points)]
    if keras:
        handles.append(Line2D([], [], color="grey", linestyle="--", label="Keras model"))
    ax.legend(handles=handles, fontsize=8, loc="best", ncol=2)
