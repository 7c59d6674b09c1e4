"""`graft build --backbone auto`: probe, build the recommendation, and with a budget, export the
file that meets it (verified against Keras by `graft export`, its cost measured again)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from graft import bundle
from graft.errors import CheckFailed, GraftError

PRECISION_ORDER = ("float32", "int8")  # when the chosen precision's real export misses, try the next


def probe_for_build(options, budget: dict, backbones: list[str] | None = None):
    """The probe a build runs: its splits, seed, resize and cache; --cut-layer and --image-size pin."""
    from graft.builder.probe import ProbeOptions

    pinned = [name for name in ("cut_layer", "image_size") if getattr(options, name) is not None]
    chosen = {"backbones": backbones} if backbones else {}
    return ProbeOptions(**chosen, cut_layers=[options.cut_layer] if options.cut_layer else None,
                        image_sizes=[options.image_size] if options.image_size else None,
                        latency_ms=budget.get("latency_ms"), size_mb=budget.get("size_mb"),
                        val_split=options.val_split, test_split=options.test_split,
                        resize=options.resize, seed=options.seed, cache_dir=options.cache_dir,
                        model_threads=options.model_threads, progress=options.progress,
                        pinned=[f"{name} = {getattr(options, name)}" for name in pinned])


def build_auto(data, out, options, budget: dict, echo, backbones: list[str] | None = None) -> dict:
    """Probe ``data``, build its recommendation at ``out``, export for the budget; the manifest."""
    from graft.builder.build import build_bundle, check_output
    from graft.builder.probe import run_probe
    from graft.cli.probe import print_probe

    if options.weights not in (None, "imagenet"):
        raise GraftError(f"--backbone auto probes backbones with their ImageNet weights; --weights "
                         f"{options.weights} applies to a named --backbone")
    check_output(Path(out), options.overwrite)  # before minutes of probing
    result = run_probe(data, probe_for_build(options, budget, backbones))
    print_probe(result, echo)
    rec = result["recommendation"]
    chosen = replace(options, backbone=rec["backbone"], image_size=rec["image_size"],
                     cut_layer=None if rec["cut_layer"] == "top" else rec["cut_layer"])
    manifest = build_bundle(data, out, chosen, probe={k: v for k, v in result.items() if k != "labels"})
    if any(v is not None for v in budget.values()):
        export_for_budget(Path(out), rec, budget, options.model_threads, echo)
        manifest = bundle.read_manifest(out)
    return manifest


def export_for_budget(out: Path, rec: dict, budget: dict, threads, echo) -> dict:
    """Export ONNX at the recommended precision (then int8, if float32 misses the budget once
    measured as a real file), verified by the exporter; record the outcome in graft.json.

    Raises:
        CheckFailed: no exported file meets the budget when measured.
    """
    from graft.builder.probe_choice import budget_text, within
    from graft.builder.probe_cost import PASSES, measure
    from graft.exporters import registry
    from graft.exporters.export import export_bundle

    tried = []
    order = PRECISION_ORDER[PRECISION_ORDER.index(rec["precision"]):]
    for precision in order:
        target = registry.TARGETS[("onnx", precision)]
        try:
            export_bundle(out, [target], echo=echo)
            verified = None
        except CheckFailed as exc:  # the file is kept and flagged; a budget is not met by it
            verified = str(exc)
        row = bundle.find_export(bundle.read_manifest(out), "onnx", precision)
        path = out / row["path"]
        data = path.read_bytes()   # timed as the probe timed its candidates: the better of its passes
        found = min((measure(data, rec["image_size"], threads) for _ in range(PASSES)),
                    key=lambda f: f["latency_ms"])
        record = {"path": row["path"], "precision": precision, **found, "budget": budget,
                  "verified": verified is None, **({"check_failed": verified} if verified else {}),
                  "meets_budget": verified is None and within(found, budget.get("latency_ms"),
                                                              budget.get("size_mb"))}
        tried.append(record)
        echo(f"budget check: {row['path']} {found['latency_ms']:.2f} ms, {found['size_mb']:.2f} MB: "
             f"{'meets' if record['meets_budget'] else 'misses'} {budget_text(**budget)}"
             + ("" if verified is None else f"; its check against Keras failed ({verified})"))
        if record["meets_budget"]:
            break
    with bundle.updating(out) as manifest:
        manifest["probe"]["export"] = tried[-1]
        manifest["probe"]["exports_tried"] = tried
    if not tried[-1]["meets_budget"]:
        raise CheckFailed(f"no verified export meets {budget_text(**budget)}: "
                          + "; ".join(f"{t['path']} {t['latency_ms']:.2f} ms {t['size_mb']:.2f} MB"
                                      + ("" if t["verified"] else " (failed its check against Keras)")
                                      for t in tried) + "; they are kept and recorded in graft.json")
    return tried[-1]
