"""`write_report` on a real built, exported and verified bundle: content, escaping, self-containment."""

from __future__ import annotations

import base64
import html
import io
import json
import re
import shutil

import pytest
from report_support import BLUE, GREEN, MODEL_CARD_SECTIONS, RED, parse_page, planted_name, test_rows

from graft import bundle
from graft.errors import BundleError, GraftError
from graft.cli.report import after_change
from graft.report import write_report


@pytest.fixture(scope="module")
def report(report_bundle, tmp_path_factory):
    """(bundle copy, its report.html text) written once for the read-only tests."""
    copy = shutil.copytree(report_bundle, tmp_path_factory.mktemp("written") / "colours")
    path = write_report(copy)
    assert path == copy / "report.html"
    return copy, path.read_text(encoding="utf-8")


def png_size(uri: str) -> tuple[int, int]:
    from PIL import Image

    assert uri.startswith("data:image/png;base64,")
    return Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))).size


def test_every_label_is_shown_escaped(report):
    _, text = report
    for label in (RED, GREEN, BLUE):
        assert html.escape(label, quote=True) in text
    assert RED not in text and GREEN not in text and BLUE not in text  # raw labels never reach the markup
    assert "red &lt;b&gt;&amp;amp;" in text                     # escaped once, not interpreted
    page = parse_page(text)
    assert [row[0] for row in page.tables["per-class"][1:]] == sorted([RED, GREEN, BLUE])
    assert [row[0] for row in page.tables["class-counts"][1:]] == sorted([RED, GREEN, BLUE]) + ["total"]


def test_page_is_self_contained(report):
    _, text = report
    assert not re.search(r"(?i)\b(?:https?|ftp):|//[a-z0-9.-]+\.[a-z]{2,}/", text)
    sources = re.findall(r"""(?i)\b(?:src|href|srcset|action|poster)\s*=\s*["']?([^"'\s>]*)""", text)
    assert sources, "the page has images"
    assert all(s.startswith("data:") or s.startswith("#") for s in sources), sources
    assert "<script" not in text.lower() and "<link" not in text.lower() and "@import" not in text
    assert "url(" not in text


def test_summary_shows_provenance_counts_and_skipped_files(report):
    copy, text = report
    manifest = bundle.read_manifest(copy)
    page = parse_page(text)
    weights = manifest["backbone"]["weights"]
    assert weights["sha256"] in text and html.escape(weights["source"]) in text
    counts = {row[0]: row[1:] for row in page.tables["class-counts"][1:]}
    for label, per_split in manifest["dataset"]["class_counts"].items():
        expected = [str(per_split[s]) for s in ("train", "val", "test")]
        assert counts[label] == expected + [str(sum(per_split.values()))]
    skipped = page.tables["skipped"][1:]
    assert [row[:2] for row in skipped] == [[f"{GREEN}/broken.jpg", GREEN]]
    assert skipped[0][2] == manifest["dataset"]["skipped"][0]["reason"]


def test_training_curves_and_stages(report):
    copy, text = report
    manifest = bundle.read_manifest(copy)
    page = parse_page(text)
    stages = manifest["training"]["stages"]
    rows = page.tables["stages"][1:]
    assert len(rows) == len(stages)
    assert rows[0][1] == str(stages[0]["epochs_run"]) and rows[0][2] == str(stages[0]["best_epoch"])
    curves = next(img for img in page.images if img.get("id") == "training-curves")
    width, height = png_size(curves["src"])
    assert width > 600 and height > 200


def test_confusion_matrix_and_per_class_metrics(report):
    copy, text = report
    manifest = bundle.read_manifest(copy)
    page = parse_page(text)
    matrix = next(img for img in page.images if img.get("id") == "confusion-matrix")
    assert min(png_size(matrix["src"])) > 200
    assert all(label in matrix["alt"] for label in manifest["labels"])
    for row in page.tables["per-class"][1:]:
        recorded = manifest["metrics"]["per_class"][row[0]]
        assert row[1:] == [f"{recorded[k]:.3f}" for k in ("precision", "recall", "f1")] + [str(recorded["support"])]
    accuracy = manifest["metrics"]["accuracy"]
    assert f"Top-1 accuracy {accuracy * 100:.2f}% on {manifest['metrics']['count']} held-out" in text


def test_misclassified_images_are_real_and_captioned(report):
    copy, text = report
    wrong = [r for r in test_rows(copy) if r["predicted"] != r["label"]]
    planted = next(r for r in test_rows(copy) if r["path"].endswith(planted_name()))
    assert planted["predicted"] == BLUE, "the blue picture filed as red is misclassified by the model"
    page = parse_page(text)
    assert len(page.captions) == len(wrong)
    caption = next(c for c in page.captions if planted["path"] in c)
    assert f"true: {RED}" in caption and f"predicted: {BLUE} ({planted['score']:.2f})" in caption
    thumbs = [img for img in page.images if img.get("alt", "").endswith(planted_name())]
    assert len(thumbs) == 1 and thumbs[0]["src"].startswith("data:image/jpeg;base64,")
    assert f"{len(wrong)} of {len(test_rows(copy))} held-out images are misclassified" in text


def test_exports_table_matches_the_manifest(report):
    copy, text = report
    manifest = bundle.read_manifest(copy)
    page = parse_page(text)
    header, *rows = page.tables["exports-table"]
    assert header[:3] == ["file", "format", "precision"] and "batch-32 (img/s)" in header
    assert [r[0] for r in rows] == ["model.float32.onnx", "model.int8.onnx"]
    by_name = {r["path"].split("/")[-1]: r for r in manifest["exports"]}
    for cells in rows:
        row = by_name[cells[0]]
        check, speed = row["verification"], row["speed"]
        assert cells[4] == f"not judged (n={check['test_images']}, too few)"  # a tiny test split
        low, high = check["agreement_interval"]
        assert cells[6] == (f"{check['top1_agreement'] * 100:.2f}% (n={check['images']}, "
                            f"{low * 100:.1f}%–{high * 100:.1f}%)")
        assert cells[7] == f"{check['max_abs_diff']:.1e}"
        assert cells[8] == f"{speed['p50_ms_batch1']:.2f}" and cells[9] == f"{speed['throughput_batch32']:.0f}"
        assert cells[10].startswith(row["status"]) and "budget: agreement ≥" in cells[10]
    chart = next(img for img in page.images if img.get("id") == "exports-chart")
    assert min(png_size(chart["src"])) > 200
    assert "onnx:int8: held-out accuracy" in text and "top-1 agreement" in text  # quantization effects


def test_model_card_written_beside_the_report(report):
    copy, text = report
    card = (copy / "MODEL_CARD.md").read_text(encoding="utf-8")
    positions = [card.index(f"\n## {title}\n") for title in MODEL_CARD_SECTIONS]
    assert positions == sorted(positions)
    assert "_To be completed by the model owner._" in card
    assert "<b>" not in card and "red &lt;b&gt;&amp;amp;" in card   # inert in Markdown renderers too
    assert re.search(r"onnx:int8: held-out accuracy not judged \(n=\d+, too few\), top-1 agreement with "
                     r"Keras [0-9.]+% \(n=\d+, [0-9.]+%–[0-9.]+%\)", card)
    assert bundle.read_manifest(copy)["backbone"]["weights"]["sha256"] in card
    for title in MODEL_CARD_SECTIONS:
        assert f"<h3>{title}</h3>" in text


def test_output_elsewhere_caps_thumbnails_and_shows_missing_images(report_bundle, tmp_path):
    copy = shutil.copytree(report_bundle, tmp_path / "b")
    splits = json.loads((copy / "splits.json").read_text())
    moved = [{"path": f"{RED}/gone_{i}.png", "file": str(tmp_path / "gone" / f"{i}.png"), "label": RED,
              "split": "test", "predicted": GREEN, "score": 0.5} for i in range(60)]
    splits["samples"] = moved + splits["samples"]
    (copy / "splits.json").write_text(json.dumps(splits))
    wrong = sum(1 for r in splits["samples"] if r["split"] == "test" and r["predicted"] != r["label"])

    out = write_report(copy, tmp_path / "site" / "index.html")

    assert out == tmp_path / "site" / "index.html" and (tmp_path / "site" / "MODEL_CARD.md").is_file()
    assert not (copy / "report.html").exists()
    text = out.read_text(encoding="utf-8")
    assert len(parse_page(text).captions) == 48
    assert f"… and {wrong - 48} more not shown." in text
    assert text.count("image not found at its recorded path (dataset moved?)") == 48


def test_older_bundle_shape_and_no_exports(report_bundle, tmp_path):
    """History directly under `training`, no predictions in splits.json, no exports."""
    copy = shutil.copytree(report_bundle, tmp_path / "old")
    manifest = bundle.read_manifest(copy)
    stage = manifest["training"]["stages"][0]
    manifest["training"] = {"hyperparameters": manifest["training"]["hyperparameters"], **stage["history"],
                            "epochs_run": stage["epochs_run"], "best_epoch": stage["best_epoch"],
                            "monitor": stage["monitor"]}
    manifest["exports"] = []
    bundle.write_manifest(copy, manifest)
    splits = json.loads((copy / "splits.json").read_text())
    for row in splits["samples"]:
        row.pop("predicted", None), row.pop("score", None)
    (copy / "splits.json").write_text(json.dumps(splits))

    text = write_report(copy).read_text(encoding="utf-8")

    page = parse_page(text)
    assert page.tables["stages"][1][:3] == ["Head (frozen backbone)", str(stage["epochs_run"]),
                                            str(stage["best_epoch"])]
    assert any(img.get("id") == "training-curves" for img in page.images)
    assert "records no test-set predictions; rebuild it with `graft build`" in text
    assert "exports-table" not in page.tables and f"graft export {html.escape(str(copy))}" in text
    assert "No exported files yet: run \\`graft export BUNDLE\\`" in (copy / "MODEL_CARD.md").read_text()


def test_older_bundle_predictions_come_from_its_onnx_export(report_bundle, tmp_path):
    copy = shutil.copytree(report_bundle, tmp_path / "old")
    splits = json.loads((copy / "splits.json").read_text())
    recorded = {r["path"]: r.pop("predicted", None) for r in splits["samples"]}
    (copy / "splits.json").write_text(json.dumps(splits))

    text = write_report(copy).read_text(encoding="utf-8")

    assert "predictions from exports/model.float32.onnx (run now" in text
    wrong = [p for p, predicted in recorded.items() if predicted is not None and
             predicted != next(r["label"] for r in splits["samples"] if r["path"] == p)]
    assert sorted(c.split("\n")[0] for c in parse_page(text).captions) == sorted(wrong)


def test_missing_matplotlib_names_the_extra(report_bundle, tmp_path, monkeypatch):
    import sys

    copy = shutil.copytree(report_bundle, tmp_path / "b")
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(GraftError, match=r"pip install 'graft\[report\]'"):
        write_report(copy)
    assert not (copy / "report.html").exists() and not (copy / "MODEL_CARD.md").exists()


def test_not_a_bundle(tmp_path):
    with pytest.raises(BundleError, match="not a graft bundle"):
        write_report(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_commands_rewrite_only_an_existing_report(report_bundle, tmp_path, capsys):
    copy = shutil.copytree(report_bundle, tmp_path / "b")
    after_change(copy)  # what build, export and verify call
    assert capsys.readouterr().out == f"report: graft report {copy}\n"
    assert not (copy / "report.html").exists() and not (copy / "MODEL_CARD.md").exists()
    write_report(copy)
    manifest = bundle.read_manifest(copy)
    manifest["exports"] = [row for row in manifest["exports"] if row["precision"] == "float32"]
    bundle.write_manifest(copy, manifest)

    after_change(copy)
    assert capsys.readouterr().out == f"updated {copy / 'report.html'}\n"

    rows = parse_page((copy / "report.html").read_text(encoding="utf-8")).tables["exports-table"][1:]
    assert [row[0] for row in rows] == ["model.float32.onnx"]
    assert "onnx:int8" not in (copy / "MODEL_CARD.md").read_text(encoding="utf-8")
