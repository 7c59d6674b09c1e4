"""`graft probe`: choose the source model, cut and resolution by measurement, before building.

1. Candidates: backbones x resolutions x cut layers (``probe_features``); one
   forward pass per backbone and resolution gives every cut's pooled features,
   extracted and cached as a build would (a build that follows reuses them).
2. Scores without training a model per candidate (``probe_scores``): k-NN
   leave-one-out and a k-fold logistic probe, each with a bootstrap 95%
   interval, and LogME to break ties. Only the training and validation images
   are used; the test split stays unseen, as the build keeps it.
3. Cost, measured (``probe_cost``): each candidate's classifier at float32 and
   int8, its file size and batch-1 latency through graft's runtime.
4. The choice (``probe_choice``): the Pareto front, the recommendation within
   the budget, and the verdict on transfer against the same head on raw pixels.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from graft import bundle
from graft.builder import data as datamod
from graft.builder import probe_choice as choice
from graft.builder import probe_cost as cost
from graft.builder import probe_features as pf
from graft.builder import probe_scores as scores
from graft.builder.backbones import is_source_model
from graft.builder.backbones.cuts import TOP
from graft.builder.backbones.efficientnet_lite import probe_cuts
from graft.builder.backbones.registry import OFFLINE, REGISTRY
from graft.builder.probe_cache import seed_build_cache
from graft.builder.extraction import ExtractOptions, extract_features
from graft.builder.features import default_cache_dir, read_pixels
from graft.errors import GraftError
from graft.progress import Progress

PRECISIONS = ("float32", "int8")
SMALL_SIZE = 128          # the cheaper resolution tried besides each backbone's native one
BASELINE_SIZE = 32        # the no-transfer baseline: the same head on 32x32x3 raw pixels
CALIBRATION = 16          # images that calibrate each candidate's int8 quantization


@dataclass
class ProbeOptions:
    backbones: list[str] = field(default_factory=lambda: list(OFFLINE))
    image_sizes: list[int] | None = None     # None: each backbone's native size and SMALL_SIZE
    cut_layers: list[str] | None = None      # None: auto (efficientnet_lite.probe_cuts; a source model's default)
    precisions: list[str] = field(default_factory=lambda: list(PRECISIONS))
    latency_ms: float | None = None
    size_mb: float | None = None
    val_split: float = 0.15
    test_split: float = 0.15
    resize: str = "stretch"
    seed: int = 0
    tolerance: float = choice.TOLERANCE
    cache_dir: str | None = None
    device: str = "cpu"
    model_threads: int | None = None
    progress: bool = True
    pinned: list[str] = field(default_factory=list)   # what --backbone auto was told to keep

    def check(self) -> "ProbeOptions":
        for name in self.backbones:
            if not is_source_model(name) and (name not in REGISTRY or not REGISTRY[name].named_cuts):
                raise GraftError(f"--backbones: graft probe tries backbones with named cut layers and "
                                 f".keras source models; received {name!r}; allowed: {', '.join(OFFLINE)}, "
                                 "or the path of a saved .keras model")
        bad = [p for p in self.precisions if p not in PRECISIONS]
        if bad or not self.precisions:
            raise GraftError(f"--precision {','.join(bad) or '(none)'}: allowed: {', '.join(PRECISIONS)}")
        for name in ("latency_ms", "size_mb"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise GraftError(f"--{name.replace('_', '-')} must be positive; received {value!r}")
        return self

    def families(self) -> list[pf.Family]:
        found = []
        for name in self.backbones:
            native = pf.native_size(name)
            sizes = self.image_sizes or sorted({native or 224, SMALL_SIZE}, reverse=True)
            cuts = (pf.source_cuts(Path(name), self.cut_layers) if is_source_model(name)
                    else self.cut_layers or probe_cuts(name))
            sizes = sorted({pf.family_size(name, s) for s in sizes}, reverse=True)
            found += [pf.Family(name, size, list(cuts)) for size in sizes]
        return found


def run_probe(data: str | Path, options: ProbeOptions | None = None, echo=None) -> dict:
    """Score, measure and choose among the candidates on ``data``; return probe.json's content.

    Raises:
        DataError: too few images per class to score, or a budget no candidate meets.
        BackboneError: a source model without a usable cut (its layers are listed).
    """
    options = (options or ProbeOptions()).check()
    started = time.perf_counter()
    everything = datamod.scan(data)   # all are extracted (a build reuses them); test ones unscored
    samples = [s for s in everything if datamod.split_of(s.rel, options.val_split, options.test_split) != "test"]
    labels = sorted({s.label for s in everything})
    y_all = np.array([labels.index(s.label) for s in samples])
    scores.check_counts(y_all, labels, " (training and validation images)")
    families = options.families()
    cache_root = Path(options.cache_dir) if options.cache_dir else default_cache_dir()
    feats, seconds = {}, {"features": 0.0, "scores": 0.0, "cost": 0.0}
    with Progress(options.progress) as progress:
        for family in families:
            tick = time.perf_counter()
            feats[(family.backbone, family.image_size)] = _extract(family, everything, cache_root, options,
                                                                   progress)
            seconds["features"] += time.perf_counter() - tick
    scored = set(samples).intersection(*(set(ext.samples) for ext, _ in feats.values()))
    usable = [s for s in samples if s in scored]
    y = np.array([labels.index(s.label) for s in usable])
    scores.check_counts(y, labels, " (usable training and validation images)")
    folds = scores.fold_ids(y, options.seed)
    tick = time.perf_counter()
    candidates, correct, features = _score_all(families, feats, usable, y, folds)
    baseline, baseline_correct = _baseline(feats, usable, y, folds, options)
    seconds["scores"] = time.perf_counter() - tick
    tick = time.perf_counter()
    _measure_all(families, feats, candidates, features, usable, y, len(labels), options, echo)
    seconds["cost"] = time.perf_counter() - tick
    by_id = {c["id"]: c for c in candidates}
    options_table = choice.pareto(choice.options_of(candidates))
    best = choice.ranked(candidates)[0]
    result = {
        "images": len(usable), "classes": len(labels), "labels": labels,
        "split": {"used": "train+val", "val_split": options.val_split, "test_split": options.test_split},
        "budget": {"latency_ms": options.latency_ms, "size_mb": options.size_mb},
        "pinned": options.pinned, "device": options.device,
        "candidates": choice.ranked(candidates), "options": options_table, "baseline": baseline,
        "verdict": choice.verdict(best, correct[best["id"]], baseline, baseline_correct),
    }
    result["recommendation"] = choice.recommend(options_table, by_id, options.latency_ms,
                                                options.size_mb, options.tolerance)
    rec = result["recommendation"]
    family = next(f for f in families if (f.backbone, f.image_size) == (rec["backbone"], rec["image_size"]))
    rec["command"] = build_command(rec)
    rec["cache_key"] = seed_build_cache(family, feats[(family.backbone, family.image_size)][0],
                                        rec["cut_layer"], cache_root)
    result["seconds"] = {k: round(v, 2) for k, v in {**seconds, "total": time.perf_counter() - started}.items()}
    return result


def _extract(family: pf.Family, samples, cache_root: Path, options: ProbeOptions, progress):
    pf.load_family(family, cache_root)
    contract = bundle.preprocessing_contract(family.image_size, family.image_size, options.resize)
    extract = ExtractOptions(extract="onnxruntime", model_threads=options.model_threads)
    ext = extract_features(samples, family.model, contract, cache_root, extract, progress)
    return ext, contract


def _score_all(families, feats, usable, y, folds) -> tuple[list[dict], dict, dict]:
    """Each candidate's row, its out-of-fold correctness and its features (by candidate id)."""
    candidates, correct, features = [], {}, {}
    for family in families:
        ext, _ = feats[(family.backbone, family.image_size)]
        position = {s: i for i, s in enumerate(ext.samples)}
        rows = ext.rows.take(np.array([position[s] for s in usable]))
        for cut, part in family.slices().items():
            x = rows[:, part]
            knn, logistic = scores.knn_loo(x, y), scores.logistic_cv(x, y, folds)
            cid = pf.label(family.backbone, family.image_size, cut)
            correct[cid], features[cid] = logistic, x
            candidates.append(_candidate(cid, family, cut, x, y, knn, logistic))
    return candidates, correct, features


def _candidate(cid, family, cut, x, y, knn, logistic) -> dict:
    return {"id": cid, "backbone": family.backbone, "image_size": family.image_size,
            "cut_layer": cut, "feature_dim": int(x.shape[1]),
            "knn": {"accuracy": round(float(knn.mean()), 4), "interval": scores.bootstrap_ci(knn),
                    "k": scores.NEIGHBOURS, "n": int(len(y))},
            "logistic": {"accuracy": round(float(logistic.mean()), 4),
                         "interval": scores.bootstrap_ci(logistic), "folds": scores.FOLDS, "n": int(len(y))},
            "logme": round(scores.logme(x, y), 4), "estimate": round(float(logistic.mean()), 4)}


def _baseline(feats, usable, y, folds, options) -> tuple[dict, np.ndarray]:
    """The no-transfer baseline: the same probes on raw, downscaled pixels (0..1)."""
    ext, _ = next(iter(feats.values()))
    sha = dict(zip(ext.samples, ext.content_sha))
    contract = bundle.preprocessing_contract(BASELINE_SIZE, BASELINE_SIZE, options.resize)
    x = np.stack([read_pixels(s.path, sha[s], contract) for s in usable]).reshape(len(usable), -1) / 255.0
    knn, logistic = scores.knn_loo(x, y), scores.logistic_cv(x, y, folds)
    description = f"the same head on raw {BASELINE_SIZE}x{BASELINE_SIZE} pixels"
    return {"description": description, "image_size": BASELINE_SIZE,
            "knn": {"accuracy": round(float(knn.mean()), 4), "interval": scores.bootstrap_ci(knn)},
            "logistic": {"accuracy": round(float(logistic.mean()), 4), "interval": scores.bootstrap_ci(logistic)},
            "estimate": round(float(logistic.mean()), 4)}, logistic


def _measure_all(families, feats, candidates, features, usable, y, classes: int, options: ProbeOptions,
                 echo) -> None:
    """Fill each candidate's ``cost``: {precision: latency_ms, size_mb, ...}, measured, and its
    ``int8_agreement`` (``cost.int8_agreement``) when int8 is asked for.

    Every file is timed in ``cost.PASSES`` round-robin passes and keeps its pass with the lowest
    median, so a burst of other work on the machine does not land on one candidate only.
    """
    by_id = {c["id"]: c for c in candidates}
    chosen = np.random.default_rng(options.seed).permutation(len(usable))[:cost.AGREEMENT_IMAGES]
    files = []   # (candidate, precision, bytes, size)
    for family in families:
        ext, contract = feats[(family.backbone, family.image_size)]
        if ext.extractor.onnx is None:
            raise GraftError(f"{pf.label(family.backbone, family.image_size, '')}: the feature model "
                             f"could not be converted to ONNX ({ext.record.get('reason')}); its cost "
                             "cannot be measured")
        sha = dict(zip(ext.samples, ext.content_sha))
        pixels = np.stack([read_pixels(usable[i].path, sha[usable[i]], contract) for i in chosen])
        for index, cut in enumerate(family.cuts):
            cand = by_id[pf.label(family.backbone, family.image_size, cut)]
            head = cost.probe_head(features[cand["id"]], y, classes)
            model = cost.classifier_onnx(ext.extractor.onnx, index, family.dims, head)
            for precision in options.precisions:
                data = model if precision == "float32" else cost.quantize_int8(model, pixels[:CALIBRATION])
                if precision == "int8":
                    reference = _softmax(features[cand["id"]][chosen], head)
                    cand["int8_agreement"] = cost.int8_agreement(data, pixels, reference, options.model_threads,
                                                                 options.device)
                files.append((cand, precision, data, family.image_size))
    for cand, precision, data, size in files:
        cand.setdefault("cost", {})
    for _ in range(cost.PASSES):
        for cand, precision, data, size in files:
            found = cost.measure(data, size, options.model_threads, options.device)
            kept = cand["cost"].get(precision)
            if kept is None or found["latency_ms"] < kept["latency_ms"]:
                cand["cost"][precision] = {**found, "passes": cost.PASSES}
    if echo:
        for cand in candidates:
            echo(f"measured {cand['id']}: " + ", ".join(
                f"{p} {c['latency_ms']:.2f} ms {c['size_mb']:.2f} MB" for p, c in cand["cost"].items()))


def _softmax(x: np.ndarray, head: dict) -> np.ndarray:
    """The float32 classifier's probabilities from cached features (``cost.classifier_onnx``'s head)."""
    logits = (np.asarray(x, np.float64) * head["scale"] + head["offset"]) @ head["weights"] + head["bias"]
    logits -= logits.max(axis=1, keepdims=True)
    return np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)


def build_command(rec: dict) -> str:
    """The `graft build` line that builds a recommendation by hand."""
    parts = [f"--backbone {rec['backbone']}", f"--image-size {rec['image_size']}"]
    if rec["cut_layer"] not in (None, TOP) or is_source_model(rec["backbone"]):
        parts.append(f"--cut-layer {rec['cut_layer']}")
    return "graft build DATA -o BUNDLE " + " ".join(parts)
