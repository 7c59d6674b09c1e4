"""The report's sections as HTML fragments: summary, training, held-out results, exports, model card."""

from __future__ import annotations

from pathlib import Path

from graft.report import facts, plots
from graft.report.card import WEIGHT_KEYS, model_card, per_class_table, quantization_notes
from graft.report.html import card_html, esc, facts_table, image, note, table
from graft.report.thumbs import data_uri, thumbnail

MAX_THUMBNAILS = 48
MAX_SKIPPED_ROWS = 200


def render_sections(bundle_dir: Path, manifest: dict) -> dict[str, str]:
    """{section id: HTML} for every section of the page."""
    rows = facts.export_rows(manifest)
    return {
        "summary": summary(manifest),
        "training": training(manifest),
        "results": results(bundle_dir, manifest),
        "exports": exports(bundle_dir, manifest, rows),
        "model-card": ("<p>Also written as <code>MODEL_CARD.md</code> beside this file. Sections follow "
                       "<em>Model Cards for Model Reporting</em> (Mitchell et al., 2019).</p>"
                       + card_html(model_card(manifest))),
    }


def _weights(backbone: dict) -> str:
    weights = backbone.get("weights") if isinstance(backbone.get("weights"), dict) else {}
    shown = [f"{esc(k)}: <span class=\"mono\">{esc(weights[k])}</span>" for k in WEIGHT_KEYS if weights.get(k)]
    return "<br>".join(shown) or "not recorded"


def summary(m: dict) -> str:
    backbone, dataset = m.get("backbone") or {}, m.get("dataset") or {}
    prep = m.get("preprocessing") or {}
    split_counts = dataset.get("split_counts") or {}
    pairs = [
        ("Bundle", esc(m.get("name", "?"))),
        ("Labels", f"{len(m['labels'])}: " + ", ".join(f"<code>{esc(label)}</code>" for label in m["labels"])),
        ("Backbone", esc(f"{backbone.get('name', '?')} ({backbone.get('source', 'source not recorded')})")
         + (f"; cut at <code>{esc(backbone['cut_layer'])}</code>" if backbone.get("cut_layer") else "")
         + (f"; {esc(backbone['feature_dim'])} features" if backbone.get("feature_dim") else "")),
        ("Normalisation", esc(backbone.get("normalisation", "not recorded"))),
        ("Weights", _weights(backbone)),
        ("Preprocessing", esc(", ".join(f"{k}: {v}" for k, v in prep.items()))),
        ("Dataset", esc(f"{dataset.get('source', '?')}: {dataset.get('images', '?')} files, "
                        f"{dataset.get('usable', '?')} usable, {len(dataset.get('skipped') or [])} skipped")),
        ("Splits", esc(", ".join(f"{k} {v}" for k, v in split_counts.items()) or "not recorded")),
    ]
    totals = facts.split_totals(m)
    counts = [[label, c["train"], c["val"], c["test"], sum(c.values())] for label, c in totals.items()]
    counts.append(["total", *(sum(c[s] for c in totals.values()) for s in ("train", "val", "test")),
                   sum(sum(c.values()) for c in totals.values())])
    parts = [facts_table(pairs), "<h3>Images per label and split</h3>",
             table(["label", "train", "val", "test", "total"], counts, numeric={1, 2, 3, 4}, css_id="class-counts")]
    parts.append(_skipped(dataset.get("skipped") or []))
    return "".join(parts)


def _skipped(skipped: list) -> str:
    rows = [[str(s.get("path", "?")), str(s.get("label", "?")), str(s.get("reason", "?"))]
            for s in skipped if isinstance(s, dict)]
    if not rows:
        return "<h3>Skipped files</h3><p>None: every file in the dataset was readable.</p>"
    more = len(rows) - MAX_SKIPPED_ROWS
    return (f"<h3>Skipped files ({len(rows)})</h3><p>Files that could not be decoded were left out of "
            f"training and evaluation:</p>" + table(["path", "label", "reason"], rows[:MAX_SKIPPED_ROWS],
                                                   css_id="skipped")
            + (f"<p>… and {more} more (all listed in graft.json).</p>" if more > 0 else ""))


def training(m: dict) -> str:
    stages = facts.training_stages(m)
    if not stages:
        return "<p>No training history is recorded in graft.json.</p>"
    rows = []
    for s in stages:
        h = s["history"]
        last = {k: (h.get(k) or [None])[-1] for k in facts.HISTORY_KEYS}
        rows.append([s["title"], s.get("epochs_run", len(h.get("loss", []))), s.get("best_epoch", "–"),
                     s.get("monitor", "–"), facts.pct(last["accuracy"]), facts.pct(last["val_accuracy"]),
                     "–" if facts.number(s.get("seconds")) is None else f"{s['seconds']:.1f}"])
    hyper = (m.get("training") or {}).get("hyperparameters") or {}
    uri = data_uri(plots.training_png(stages), "image/png")
    return (table(["stage", "epochs run", "best epoch", "monitor", "final train accuracy",
                   "final val accuracy", "seconds"], rows, numeric={1, 2, 4, 5, 6}, css_id="stages")
            + image(uri, "training curves: loss and accuracy per epoch", "training-curves")
            + (f"<p>Hyper-parameters: <code>{esc(', '.join(f'{k}={v}' for k, v in hyper.items()))}</code></p>"
               if hyper else ""))


def results(bundle_dir: Path, m: dict) -> str:
    metrics = m.get("metrics") or {}
    matrix, labels = metrics.get("confusion_matrix"), m["labels"]
    parts = [f"<p>{esc(_accuracy_text(metrics))}</p>"]
    if isinstance(matrix, list) and len(matrix) == len(labels):
        uri = data_uri(plots.confusion_png(labels, matrix), "image/png")
        blank = " Zero cells are left blank." if len(labels) > plots.SPARSE_ABOVE else ""
        parts.append(f"<h3>Confusion matrix</h3><p>Rows: true label; columns: predicted label.{blank}</p>"
                     + image(uri, "confusion matrix: " + ", ".join(labels), "confusion-matrix",
                             wide=len(labels) > plots.SPARSE_ABOVE))
    else:
        parts.append(note("No confusion matrix is recorded in graft.json; rebuild with `graft build`."))
    card = per_class_table(m)
    parts += ["<h3>Per label</h3>", table(card.headers, card.rows, numeric={1, 2, 3, 4}, css_id="per-class"),
              _misclassified(bundle_dir, m)]
    return "".join(parts)


def _accuracy_text(metrics: dict) -> str:
    accuracy, count = facts.number(metrics.get("accuracy")), int(facts.number(metrics.get("count")) or 0)
    if accuracy is None or not count:
        return "No held-out images were evaluated (the test split is empty)."
    low, high = facts.wilson_interval(round(accuracy * count), count)
    return (f"Top-1 accuracy {facts.pct(accuracy)} on {count} held-out {metrics.get('split', 'test')} images "
            f"(95% interval {facts.pct(low, 1)} to {facts.pct(high, 1)}).")


def _misclassified(bundle_dir: Path, m: dict) -> str:
    found = facts.misclassified(bundle_dir, m)
    head = "<h3>Misclassified held-out images</h3>"
    if not found["evaluated"]:
        return head + note(esc(found["note"]))
    wrong = found["rows"]
    intro = (f"<p>{len(wrong)} of {found['evaluated']} held-out images are misclassified "
             f"(predictions from {esc(found['source'])}).</p>")
    if found["note"]:
        intro += note(esc(found["note"]))
    if not wrong:
        return head + intro
    figures = []
    for row in wrong[:MAX_THUMBNAILS]:
        uri, why = thumbnail(row["file"])
        picture = (f'<img src="{uri}" alt="{esc(row["path"])}">' if uri
                   else f'<div class="placeholder" title="{esc(row["file"])}">{esc(why)}</div>')
        score = "" if row["score"] is None else f" ({row['score']:.2f})"
        figures.append(f'<figure class="thumb">{picture}<figcaption><span class="mono">{esc(row["path"])}'
                       f"</span><br>true: <b>{esc(row['label'])}</b><br>predicted: <b>{esc(row['predicted'])}"
                       f"</b>{esc(score)}</figcaption></figure>")
    more = len(wrong) - MAX_THUMBNAILS
    return (head + intro + f'<div class="thumbs" id="misclassified">{"".join(figures)}</div>'
            + (f"<p>… and {more} more not shown.</p>" if more > 0 else ""))


def _budget(budget: dict | None) -> str:
    if not budget:
        return ""
    words = {"min_agreement": lambda v: f"agreement ≥ {facts.pct(v)}",
             "max_abs_diff": lambda v: f"max |Δprob| ≤ {v:.0e}",
             "max_accuracy_drop": lambda v: f"accuracy drop ≤ {v * 100:.2f} pt"}
    return "; ".join(words[k](v) if k in words and facts.number(v) is not None else f"{k}={v}"
                     for k, v in budget.items())


def exports(bundle_dir: Path, m: dict, rows: list[dict]) -> str:
    if not rows:
        return note(f"No exports yet. Make them with <code>graft export {esc(bundle_dir)}</code> "
                    "(ONNX and TFLite, float32 to int8), then measure them with <code>graft verify</code>.")
    cells = []
    for r in rows:
        status = f'<span class="status-{esc(r["status"])}">{esc(r["status"])}</span>'
        detail = r["flagged"] or "; ".join(r["breaches"])
        if detail:
            status += f"<br>{esc(detail)}"
        if r["budget"]:
            status += f"<br><small>budget: {esc(_budget(r['budget']))}</small>"
        cells.append([Path(r["path"]).name, r["format"], r["precision"], facts.megabytes(r["size_bytes"]),
                      facts.accuracy_cell(r), facts.drop_cell(r), facts.agreement_cell(r),
                      "–" if r["max_abs_diff"] is None else f"{r['max_abs_diff']:.1e}",
                      "–" if r["p50_ms"] is None else f"{r['p50_ms']:.2f}",
                      "–" if r["throughput"] is None else f"{r['throughput']:.0f}", status])
    parts = [table(["file", "format", "precision", "size", "held-out accuracy (n, 95% CI)",
                    "Δ vs Keras (95% CI)", "agreement (n, 95% CI)",
                    "max |Δprob|", "p50 batch-1 (ms)", "batch-32 (img/s)", "status"],
                   cells, numeric=set(range(3, 10)), css_id="exports-table", raw={10})]
    if any(r["p50_ms"] is None for r in rows):
        parts.append(f"<p>Latency and throughput come from <code>graft verify "
                     f"{esc(bundle_dir)}</code>; a dash means not measured yet.</p>")
    keras = next((r["keras_accuracy"] for r in rows if r["keras_accuracy"] is not None), None)
    chart = plots.exports_png(rows, keras)
    if chart:
        parts.append(image(data_uri(chart, "image/png"), "accuracy vs size and speed of the exports",
                           "exports-chart"))
    notes = quantization_notes(m)
    parts.append("<h3>Quantization effects</h3><ul>" + "".join(f"<li>{esc(n)}</li>" for n in notes) + "</ul>")
    return "".join(parts)
