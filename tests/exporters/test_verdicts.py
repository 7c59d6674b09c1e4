"""Verdicts on small data: agreement on every usable image, n and 95% intervals, the interval rule."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from models import copy_bundle
from graft import bundle, stats
from graft.cli import cli
from graft.exporters import budgets, parity


def run(*args):
    return CliRunner().invoke(cli, list(map(str, args)))


def test_wilson_and_newcombe_intervals():
    low, high = stats.wilson(19, 20)
    assert math.isclose(low, 0.7639, abs_tol=1e-4) and math.isclose(high, 0.9911, abs_tol=1e-4)
    assert stats.wilson(20, 20) == (pytest.approx(0.8389, abs=1e-4), 1.0)
    assert stats.wilson(0, 0) == (0.0, 1.0)
    # Newcombe (1998) method 10: no discordant pair still leaves an interval around 0 at small n
    drop, low, high = stats.paired_difference(19, 0, 0, 1)
    assert drop == 0 and low < -0.1 and high > 0.1 and math.isclose(low, -high)
    drop, low, high = stats.paired_difference(900, 60, 0, 40)  # export wrong on 60 of 1000 Keras got right
    assert math.isclose(drop, 0.06) and 0.04 < low < drop < high < 0.08


class FakeImages:
    """What ``parity.measure`` reads of a CheckImages: labels and the held-out mask."""

    def __init__(self, y, held):
        self.y, self.held = np.asarray(y), np.asarray(held)


def one_flipped(n_all=130, n_test=20, classes=3):
    y = np.arange(n_all) % classes
    reference = np.eye(classes, dtype=np.float32)[y] * 0.9 + 0.1 / classes
    candidate = reference.copy()
    candidate[0] = np.roll(candidate[0], 1)  # the export flips one held-out image
    held = np.arange(n_all) < n_test
    return reference, candidate, FakeImages(y, held)


def test_one_flipped_test_image_does_not_flag_an_int8_export():
    """130 usable images, 20 held out: one flip is 95% on the test split, 99.2% over all images."""
    reference, candidate, images = one_flipped()
    result = parity.measure(reference, candidate, images)
    assert result["top1_agreement"] == pytest.approx(129 / 130) and result["test_images"] == 20
    assert result["agreement_interval"][1] >= 0.99 and not result["accuracy_judged"]
    assert result["accuracy_drop"] == pytest.approx(0.05)
    verdict = budgets.judge(result, "int8", None)
    assert verdict["status"] == "ok" and verdict["rule"] == "interval"
    strict = budgets.judge(result, "int8", None, strict=True)
    assert strict["status"] == "flagged"
    assert any(b.startswith("accuracy drop 5.00 pt (n=20, 95% CI") for b in strict["breaches"])


def test_a_real_regression_still_breaks_the_interval_rule():
    """An export wrong on a third of the images breaks the budget whatever the interval."""
    y = np.arange(300) % 3
    reference = np.eye(3, dtype=np.float32)[y]
    candidate = reference.copy()
    candidate[::3] = np.roll(candidate[::3], 1, axis=1)
    result = parity.measure(reference, candidate, FakeImages(y, np.arange(300) < 100))
    verdict = budgets.judge(result, "int8", None)
    assert verdict["status"] == "flagged"
    assert any(b.startswith("agreement 66.67% (n=300, 95% CI") for b in verdict["breaches"])
    assert any(b.startswith("accuracy drop 34.00 pt (n=100") for b in verdict["breaches"])


@pytest.fixture()
def flipping(monkeypatch):
    """Every export run answers as Keras does, except on the first held-out image."""
    def run_file(path, images, threads=None, batch=32):
        probs = images.reference().copy()
        first = int(np.flatnonzero(images.held)[0])
        probs[first] = np.roll(probs[first], 1)
        return probs

    monkeypatch.setattr(parity, "run_file", run_file)


def test_verify_judges_by_interval_and_strict_keeps_the_point_rule(exported_bundle, tmp_path, flipping):
    out = copy_bundle(exported_bundle, tmp_path / "bundle")
    result = run("verify", out, "--no-speed")
    counts = bundle.read_manifest(out)["dataset"]["split_counts"]
    flagged_float32 = [r for r in json.loads((out / "verify.json").read_text())["rows"] if not r["passed"]]
    # float32 must agree on every image: one flip breaks it under either rule; int8 passes by interval
    assert result.exit_code == 1 and {r["precision"] for r in flagged_float32} == {"float32"}
    int8 = bundle.find_export(bundle.read_manifest(out), "onnx", "int8")["verification"]
    assert int8["passed"] and int8["images"] == sum(counts.values()) and int8["rule"] == "interval"
    assert int8["test_images"] == counts["test"] and not int8["accuracy_judged"]
    assert "too few to judge" in (out / "verify.md").read_text()
    strict = run("verify", out, "--no-speed", "--strict")
    assert strict.exit_code == 1 and "model.int8.onnx (accuracy drop" in strict.output


def test_agreement_data_adds_unlabelled_images(exported_bundle, tmp_path):
    out = copy_bundle(exported_bundle, tmp_path / "bundle")
    extra = tmp_path / "unlabelled"
    extra.mkdir()
    for i, rgb in enumerate([(250, 5, 5), (5, 250, 5), (5, 5, 250), (240, 30, 20)]):
        Image.new("RGB", (33, 27), rgb).save(extra / f"{i}.png")
    usable = sum(bundle.read_manifest(out)["dataset"]["split_counts"].values())
    result = run("verify", out, "--no-speed", "--agreement-data", extra)
    assert result.exit_code == 0, result.output
    report = json.loads((out / "verify.json").read_text())
    assert report["check"]["images"] == usable + 4 and report["check"]["extra"] == 4
    assert all(r["images"] == usable + 4 for r in report["rows"])


def test_unlabelled_data_for_accuracy_is_one_line_error(exported_bundle, tmp_path):
    loose = tmp_path / "loose"
    loose.mkdir()
    Image.new("RGB", (20, 20), (255, 0, 0)).save(loose / "a.png")
    result = run("verify", exported_bundle, "--no-speed", "--data", loose)
    assert result.exit_code == 2
    line = result.output.strip()
    assert "\n" not in line and "accuracy needs labels" in line and f"--agreement-data {loose}" in line


def test_a_cap_takes_a_stated_seeded_sample_held_out_first(exported_bundle, tmp_path):
    out = copy_bundle(exported_bundle, tmp_path / "bundle")
    counts = bundle.read_manifest(out)["dataset"]["split_counts"]
    cap = counts["test"] + 5
    first = parity.CheckImages(out, limit=cap)
    again = parity.CheckImages(out, limit=cap)
    assert len(first) == cap and first.sampled and first.files == again.files
    assert int(first.held.sum()) == counts["test"]  # every held-out image is kept
    result = run("verify", out, "--no-speed", "--check-images", cap)
    assert result.exit_code == 0, result.output
    assert f"Agreement with Keras on {cap} images (a seeded sample of {sum(counts.values())}, seed 0)" \
        in result.output
