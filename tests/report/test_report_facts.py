"""The report's readings of a manifest: both training shapes, export rows, the model card's facts."""

from __future__ import annotations

import math

from graft.report.card import model_card, quantization_notes
from graft.report.markdown import model_card_markdown
from graft.report.facts import export_rows, training_stages, wilson_interval

HISTORY = {"loss": [1.0, 0.5], "accuracy": [0.5, 0.9], "val_loss": [1.1, 0.6], "val_accuracy": [0.4, 0.8]}


def manifest(**extra) -> dict:
    return {"schema_version": 1, "name": "m", "labels": ["a", "b"], "input": {},
            "preprocessing": {"size": [8, 8]}, **extra}


def test_new_training_shape_keeps_every_stage_in_order():
    stages = training_stages(manifest(training={"hyperparameters": {}, "stages": [
        {"name": "head", "history": HISTORY, "epochs_run": 2, "best_epoch": 2, "monitor": "val_loss"},
        {"name": "fine_tune", "history": {"loss": [0.4, float("nan")]}, "epochs_run": 2}]}))
    assert [s["title"] for s in stages] == ["Head (frozen backbone)", "Fine-tuning"]
    assert stages[0]["history"] == HISTORY and stages[0]["best_epoch"] == 2
    assert stages[1]["history"] == {"loss": [0.4, None]}   # NaN becomes a gap, not a crash


def test_old_training_shape_is_one_head_stage():
    stages = training_stages(manifest(training={"hyperparameters": {"lr": 0.1}, **HISTORY, "epochs_run": 2,
                                                "best_epoch": 1, "monitor": "val_loss"}))
    assert len(stages) == 1 and stages[0]["name"] == "head"
    assert stages[0]["history"] == HISTORY and stages[0]["best_epoch"] == 1
    assert training_stages(manifest()) == [] and training_stages(manifest(training={"stages": []})) == []


def test_export_rows_prefer_verification_and_keep_the_budget():
    parity = {"accuracy": 0.9, "keras_accuracy": 0.9, "accuracy_drop": 0.0, "top1_agreement": 1.0,
              "max_abs_diff": 1e-3, "budget": {"min_agreement": 0.98}, "passed": True, "breaches": []}
    rows = export_rows(manifest(exports=[
        {"path": "exports/model.int8.onnx", "format": "onnx", "precision": "int8", "size_bytes": 10,
         "status": "flagged", "flagged": "breaks its budget: agreement 95.00% < 98.00%", "parity": parity,
         "verification": {"accuracy": 0.85, "accuracy_drop": 0.05, "top1_agreement": 0.95,
                          "max_abs_diff": 0.2, "passed": False, "breaches": ["agreement 95.00% < 98.00%"]},
         "speed": {"p50_ms_batch1": 1.5, "throughput_batch32": 900.0, "threads": 2}},
        {"path": "exports/model.float32.onnx", "format": "onnx", "precision": "float32", "size_bytes": 40},
    ]))
    assert [r["precision"] for r in rows] == ["float32", "int8"]
    unverified, int8 = rows
    assert unverified["status"] == "unverified" and unverified["accuracy"] is None
    assert int8["accuracy"] == 0.85 and int8["agreement"] == 0.95 and int8["checked_by"] == "graft verify"
    assert math.isclose(int8["keras_accuracy"], 0.9) and int8["budget"] == {"min_agreement": 0.98}
    assert int8["p50_ms"] == 1.5 and int8["throughput"] == 900.0
    notes = quantization_notes(manifest(exports=[{"format": "onnx", "precision": "float32", "size_bytes": 40},
                                                 {"format": "onnx", "precision": "int8", "size_bytes": 10,
                                                  "parity": parity, "status": "ok"}]))
    assert notes[1] == ("onnx:int8: held-out accuracy 90.00% (+0.00 pt vs Keras), top-1 agreement with "
                        "Keras 100.00%, 4.0x smaller than float32.")
    assert "not checked against the Keras model" in notes[0]
    measured = {**parity, "images": 130, "agreement_interval": [0.9713, 1.0], "test_images": 40,
                "accuracy_interval": [0.77, 0.96], "drop_interval": [-0.05, 0.06]}
    notes = quantization_notes(manifest(exports=[{"format": "onnx", "precision": "int8", "size_bytes": 10,
                                                  "parity": measured, "status": "ok"}]))
    assert notes[0] == ("onnx:int8: held-out accuracy 90.00% (n=40, 77.0%–96.0%) (+0.00 pt (-6.00 to +5.00) "
                        "vs Keras), top-1 agreement with Keras 100.00% (n=130, 97.1%–100.0%).")
    few = quantization_notes(manifest(exports=[{"format": "onnx", "precision": "int8", "size_bytes": 10,
                                                "parity": {**measured, "test_images": 11}, "status": "ok"}]))
    assert "held-out accuracy not judged (n=11, too few), top-1 agreement" in few[0]


def test_wilson_interval():
    low, high = wilson_interval(11, 11)
    assert math.isclose(low, 0.7412, abs_tol=1e-3) and high == 1.0
    low, high = wilson_interval(50, 100)
    assert math.isclose(low, 0.4038, abs_tol=1e-3) and math.isclose(high, 0.5962, abs_tol=1e-3)
    assert wilson_interval(0, 0) is None


def test_model_card_of_a_sparse_manifest_marks_what_graft_cannot_know():
    sections = model_card(manifest())
    assert [title for title, _ in sections][0] == "Model Details"
    text = model_card_markdown(manifest(name="a|b*c_[x]"))
    assert text.startswith("# Model card: a\\|b\\*c\\_\\[x\\]\n")
    assert text.count("_To be completed by the model owner._") >= 12
    assert "No held-out images were evaluated." in text


def test_importing_the_report_package_stays_light():
    import subprocess
    import sys

    code = ("import sys, graft.report; "
            "print(sorted(m for m in ('matplotlib', 'tensorflow', 'keras', 'onnxruntime') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
