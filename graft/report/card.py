"""A model card (Mitchell et al., 2019, "Model Cards for Model Reporting") filled from graft.json.

Fields graft knows (data, training, metrics, exports) are filled in; fields it
cannot know (who made the model, for whom, ethical review) are marked as to be
completed by the model owner. The card is a list of sections that both the
Markdown and the HTML renderers read; values are plain text, escaped by them.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from graft.report.facts import accuracy_cell, agreement_cell, drop_cell, export_rows, megabytes, number, \
    pct, points, split_totals, training_stages, wilson_interval

OWNER = "To be completed by the model owner."
WEIGHT_KEYS = ("source", "package", "version", "file", "license", "sha256", "file_sha256")


@dataclass
class Owner:
    """A field for the model owner to complete, with what graft does know (``hint``)."""

    hint: str = ""


@dataclass
class Table:
    headers: list[str]
    rows: list[list[str]] = field(default_factory=list)


ETHICS = (
    ("Data", "Does the training or evaluation data include sensitive information, or people?"),
    ("Human life", "Could the model's output inform decisions about people's health, safety or livelihood?"),
    ("Mitigations", "What was done during development to reduce risks?"),
    ("Risks and harms", "What could go wrong in use, for whom, and how likely is it?"),
    ("Use cases", "Which uses are known to be fraught or should be avoided?"),
)
RECOMMENDATIONS = [
    "Evaluate the model on images from the place where it will be used before relying on it.",
    "Ship an export whose status is ok; re-run `graft verify BUNDLE` on the target hardware for its "
    "latency and throughput.",
    "Feed the model RGB pixels resized as the preprocessing contract says (graft's runtime does this).",
]

# A value is text, a list of bullet texts, a Table or an Owner marker.
Card = list[tuple[str, list[tuple[str, object]]]]


def model_card(manifest: dict) -> Card:
    """The model card's sections, in the order of the Model Cards proposal."""
    return [
        ("Model Details", _details(manifest)),
        ("Intended Use", _intended_use(manifest)),
        ("Factors", _factors(manifest)),
        ("Metrics", _metrics(manifest)),
        ("Evaluation Data", _evaluation_data(manifest)),
        ("Training Data", _training_data(manifest)),
        ("Quantitative Analyses", _quantitative(manifest)),
        ("Ethical Considerations", [(name, Owner(question)) for name, question in ETHICS]),
        ("Caveats and Recommendations", [("Limitations", caveats(manifest)),
                                         ("Quantization effects", quantization_notes(manifest)),
                                         ("Recommendations", RECOMMENDATIONS)]),
    ]


def _details(m: dict) -> list:
    backbone = m.get("backbone") or {}
    weights = backbone.get("weights") if isinstance(backbone.get("weights"), dict) else {}
    stages = training_stages(m)
    tuned = any(s["name"] == "fine_tune" for s in stages)
    size = (m.get("preprocessing") or {}).get("size") or ["?", "?"]
    kind = (f"Image classifier over {len(m['labels'])} labels: the pretrained backbone "
            f"{backbone.get('name', '?')} ({backbone.get('source', 'source not recorded')}"
            + (f", cut at layer {backbone['cut_layer']}" if backbone.get("cut_layer") else "")
            + f", {backbone.get('feature_dim', '?')} features), frozen, with a new dense softmax head "
            + ("trained on top, then fine-tuned. " if tuned else "trained on top. ")
            + f"Input: RGB pixels 0..255, {size[0]}x{size[1]}.")
    provenance = [f"{key}: {weights[key]}" for key in WEIGHT_KEYS if weights.get(key)]
    hyper = (m.get("training") or {}).get("hyperparameters") or {}
    training = [", ".join(f"{k}={v}" for k, v in hyper.items())] if hyper else []
    training += [_stage_line(s) for s in stages]
    return [
        ("Developed by", Owner()),
        ("Model date", str(m.get("created", "not recorded"))),
        ("Model version", f"bundle {m.get('name', '?')}, built with graft {m.get('graft_version', '?')}"),
        ("Model type", kind),
        ("Labels", ", ".join(m["labels"])),
        ("Backbone weights", provenance or "not recorded"),
        ("Training algorithm and parameters", training or "not recorded"),
        ("Fairness constraints", Owner()),
        ("Paper or other resource", Owner()),
        ("Citation details", Owner()),
        ("License", Owner(f"The backbone's weights are licensed {weights['license']}."
                          if weights.get("license") else "")),
        ("Contact", Owner()),
    ]


def _stage_line(stage: dict) -> str:
    parts = [f"{stage['title']}: {stage.get('epochs_run', len(stage['history'].get('loss', [])))} epochs"]
    if stage.get("best_epoch"):
        parts.append(f"best epoch {stage['best_epoch']} by {stage.get('monitor', 'loss')}")
    if number(stage.get("seconds")) is not None:
        parts.append(f"{stage['seconds']:.1f} s")
    return ", ".join(parts)


def _intended_use(m: dict) -> list:
    return [
        ("Primary intended uses", Owner(f"What graft knows: the model assigns an image to one of "
                                        f"{len(m['labels'])} labels ({', '.join(m['labels'])}).")),
        ("Primary intended users", Owner()),
        ("Out-of-scope use cases", Owner("By design the model always answers one of its labels, even "
                                         "for an image that shows none of them (there is no 'other' "
                                         "class); images unlike its training data are out of scope.")),
    ]


def _factors(m: dict) -> list:
    return [
        ("Relevant factors", Owner("graft records no attributes of the images (who or what is "
                                   "pictured, lighting, camera, place), so it cannot name the groups "
                                   "or conditions that matter.")),
        ("Evaluation factors", "Results are reported per label, the only factor graft records."),
    ]


def _accuracy_line(m: dict) -> str:
    metrics = m.get("metrics") or {}
    accuracy, count = number(metrics.get("accuracy")), int(number(metrics.get("count")) or 0)
    if accuracy is None or not count:
        return "No held-out images were evaluated."
    correct = round(accuracy * count)
    low, high = wilson_interval(correct, count)
    return (f"Top-1 accuracy {pct(accuracy)} on {count} held-out ({metrics.get('split', 'test')}) images "
            f"({correct} correct; 95% Wilson interval {pct(low, 1)} to {pct(high, 1)}).")


def _metrics(m: dict) -> list:
    return [
        ("Model performance measures", "Top-1 accuracy, and per-label precision, recall and F1 with the "
         "confusion matrix, on the held-out split. Each exported file is run next to the Keras model on "
         "every usable image of the dataset: top-1 agreement and the largest probability difference "
         "(max |Δprob|); the accuracy change is measured on the held-out split. Each figure carries its n "
         "and a 95% interval (Wilson; Newcombe's paired interval for the change), and a budget per "
         "precision breaks only when the whole interval is past it."),
        ("Decision thresholds", "None: the prediction is the label with the highest probability "
         "(argmax). Scores are softmax probabilities, not calibrated confidences."),
        ("Variation approaches", "One split by a hash of each file's path, no cross-validation. "
         + _accuracy_line(m)),
    ]


def _evaluation_data(m: dict) -> list:
    dataset, metrics = m.get("dataset") or {}, m.get("metrics") or {}
    prep = m.get("preprocessing") or {}
    split = metrics.get("split", "test")
    return [
        ("Datasets", f"The {split} split of {dataset.get('source', 'the training data')}: "
                     f"{metrics.get('count', 0)} images."),
        ("Motivation", "Held out by a hash of each file's relative path: never used for training or "
         "early stopping, and stable when images are added. "
         + (f"Rule: {dataset['split_rule']}." if dataset.get("split_rule") else "")),
        ("Preprocessing", ", ".join(f"{k}: {v}" for k, v in prep.items()) or "not recorded"),
    ]


def _training_data(m: dict) -> list:
    dataset = m.get("dataset") or {}
    totals = split_totals(m)
    table = Table(["label", "train", "val", "test"],
                  [[label, *(str(c[s]) for s in ("train", "val", "test"))] for label, c in totals.items()])
    skipped = [s for s in dataset.get("skipped") or [] if isinstance(s, dict)]
    reasons = Counter(str(s.get("reason", "unknown")) for s in skipped)
    weights = (m.get("backbone") or {}).get("weights") or {}
    origin = " ".join(str(weights[k]) for k in ("source", "package", "version") if weights.get(k))
    return [
        ("Datasets", f"{dataset.get('source', 'not recorded')}: {dataset.get('images', '?')} files found, "
                     f"{dataset.get('usable', '?')} usable, {len(skipped)} skipped."
                     + (f" Fingerprint (sha256): {dataset['fingerprint']}." if dataset.get("fingerprint") else "")),
        ("Images per label and split", table),
        ("Skipped files", [f"{reason}: {n} file(s)" for reason, n in reasons.most_common(10)] or "none"),
        ("Backbone pretraining data", "ImageNet (ILSVRC-2012 classification), through the pretrained weights."
         if weights.get("source") == "imagenet"
         else Owner(f"The backbone's weights came from: {origin or 'not recorded'}.")),
    ]


def per_class_table(m: dict) -> Table:
    per_class = (m.get("metrics") or {}).get("per_class") or {}
    table = Table(["label", "precision", "recall", "F1", "support"])
    for label in m["labels"]:
        row = per_class.get(label) if isinstance(per_class.get(label), dict) else {}
        table.rows.append([label, *(_fixed(row.get(k)) for k in ("precision", "recall", "f1")),
                           str(row.get("support", "–"))])
    return table


def _fixed(value) -> str:
    value = number(value)
    return "–" if value is None else f"{value:.3f}"


def _quantitative(m: dict) -> list:
    rows = export_rows(m)
    exports = Table(["file", "held-out accuracy (n, 95% CI)", "Δ vs Keras (95% CI)",
                     "agreement with Keras (n, 95% CI)", "size", "status"],
                    [[f"{r['format']}:{r['precision']}", accuracy_cell(r), drop_cell(r),
                      agreement_cell(r), megabytes(r["size_bytes"]), r["status"]] for r in rows])
    return [
        ("Unitary results", _accuracy_line(m)),
        ("Per label", per_class_table(m)),
        ("Intersectional results", Owner("graft records no subgroup attributes of the images.")),
        ("Exported files", exports if rows else "No exports yet; make them with `graft export BUNDLE`."),
    ]


def caveats(m: dict) -> list[str]:
    """Limitations graft can state from the manifest, quantization effects included."""
    notes = []
    metrics, totals = m.get("metrics") or {}, split_totals(m)
    count = int(number(metrics.get("count")) or 0)
    fewest = min((c["test"] for c in totals.values()), default=0)
    if count < 100 or fewest < 10:
        notes.append(f"Small held-out set: {count} images, as few as {fewest} for one label; "
                     "the accuracy above is uncertain (see its interval). Evaluate on more data before relying on it.")
    per_class = metrics.get("per_class") or {}
    f1 = {label: number((per_class.get(label) or {}).get("f1")) for label in m["labels"]}
    weak = sorted((v, k) for k, v in f1.items() if v is not None and v < 0.9)
    if weak:
        notes.append("Weakest labels (F1 below 0.9): " + ", ".join(f"{k} ({v:.2f})" for v, k in weak[:8]) + ".")
    train = {label: c["train"] for label, c in totals.items()}
    if train and min(train.values()) and max(train.values()) / min(train.values()) >= 3:
        big, small = max(train, key=train.get), min(train, key=train.get)
        notes.append(f"Imbalanced training data: {train[big]} images of {big} but {train[small]} of "
                     f"{small} (class weights compensate during training).")
    skipped = (m.get("dataset") or {}).get("skipped") or []
    if skipped:
        notes.append(f"{len(skipped)} file(s) of the dataset could not be read and were skipped.")
    notes.append("The model always answers one of its labels; it cannot say 'none of these'.")
    return notes


def quantization_notes(m: dict) -> list[str]:
    """One line per export: its accuracy and agreement against Keras, its size against float32."""
    rows = export_rows(m)
    if not rows:
        return ["No exported files yet: run `graft export BUNDLE`, then `graft verify BUNDLE`."]
    base = {r["format"]: r["size_bytes"] for r in rows if r["precision"] == "float32" and r["size_bytes"]}
    notes = []
    for r in rows:
        text = f"{r['format']}:{r['precision']}: "
        if r["accuracy"] is None:
            text += "not checked against the Keras model (run `graft verify BUNDLE`)"
        else:
            drop = drop_cell(r)
            text += (f"held-out accuracy {accuracy_cell(r)}" + (f" ({drop} vs Keras)" if drop != "–" else "")
                     + f", top-1 agreement with Keras {agreement_cell(r)}")
        if r["size_bytes"] and base.get(r["format"]) and r["precision"] != "float32":
            ratio = base[r["format"]] / r["size_bytes"]
            text += (f", {ratio:.1f}x smaller than float32" if ratio >= 1
                     else f", {1 / ratio:.1f}x larger than float32")
        if r["p50_ms"] is not None and r["throughput"] is not None:
            text += f", {r['p50_ms']:.2f} ms at batch 1, {r['throughput']:.0f} images/s at batch 32"
        if r["status"] == "flagged":
            text += f"; FLAGGED: {r['flagged'] or 'breaks its budget'}"
        notes.append(text + ".")
    return notes
