"""`graft probe`: which backbone, cut and resolution to build, measured on the user's data."""

from __future__ import annotations

import json
from pathlib import Path

import click


def _names(value: str | None) -> list[str] | None:
    if value is None or value.strip().lower() == "auto":
        return None
    return [part.strip() for part in value.split(",") if part.strip()]


def _sizes(value: str | None) -> list[int] | None:
    names = _names(value)
    if names is None:
        return None
    try:
        sizes = [int(n) for n in names]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers; received {value!r}") from None
    if not all(32 <= s <= 1024 for s in sizes):
        raise click.BadParameter(f"sizes must be in 32..1024; received {value!r}")
    return sizes


def probe_options(func):
    """The options `graft probe` and `graft build --backbone auto` share."""
    options = [
        click.option("--latency-ms", type=click.FloatRange(0, min_open=True), default=None,
                     help="Budget: batch-1 latency on this machine, measured through graft's runtime."),
        click.option("--size-mb", type=click.FloatRange(0, min_open=True), default=None,
                     help="Budget: the exported model file's size in MB."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


@click.command()
@click.argument("data", type=click.Path(path_type=str))
@click.option("--backbones", default=None, help="Comma-separated backbones and .keras source models "
              "(default: every backbone that works offline: efficientnet_lite0,1,2).")
@click.option("--image-sizes", default=None, help="Comma-separated resolutions (default: each "
              "backbone's native size and 128).")
@click.option("--cut-layers", default="auto", show_default=True, help="Comma-separated cut layers "
              "(EfficientNet-Lite block ends such as block5c, or top; a source model's layer names), "
              "or auto: the ends of stages 5 and 6 and the top (a source model: its last pooled layer).")
@click.option("--precision", "precisions", default="float32,int8", show_default=True,
              help="Precisions to measure each candidate at (int8: a real static quantization).")
@probe_options
@click.option("-o", "--output", "out", type=click.Path(path_type=str), default="probe.json",
              show_default=True, help="Where to write every candidate, the verdict and the choice.")
@click.option("--val-split", type=click.FloatRange(0, 0.5), default=0.15, show_default=True)
@click.option("--test-split", type=click.FloatRange(0, 0.5), default=0.15, show_default=True,
              help="Held out as `graft build` holds it out: never scored by the probe.")
@click.option("--resize", type=click.Choice(["stretch", "crop"]), default="stretch", show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", type=click.Choice(["cpu", "cuda", "tensorrt", "openvino", "auto"]), default="cpu",
              show_default=True,
              help="Where latency is measured.")
@click.option("--model-threads", type=click.IntRange(1, 256), default=None,
              help="onnxruntime threads for extraction and timing (default: every core this "
              "process may use).")
@click.option("--cache-dir", type=click.Path(path_type=str), default=None,
              help="Feature cache (default: $GRAFT_CACHE or ~/.cache/graft).")
def probe(data, backbones, image_sizes, cut_layers, precisions, out, **rest):
    """Score backbone x cut x resolution candidates on DATA, measure their cost, recommend one."""
    from graft.builder.probe import ProbeOptions, run_probe
    from graft.quiet import import_tensorflow

    import_tensorflow()  # without its C++ start-up lines (shown under --debug)
    options = ProbeOptions(**_probe_kwargs(backbones, image_sizes, cut_layers, precisions), **rest)
    result = run_probe(data, options, echo=None)
    write_probe(out, result)
    print_probe(result, echo=click.echo)
    click.echo(f"probe: {out}")


def _probe_kwargs(backbones, image_sizes, cut_layers, precisions) -> dict:
    kwargs = {"image_sizes": _sizes(image_sizes), "cut_layers": _names(cut_layers),
              "precisions": _names(precisions) or ["float32", "int8"]}
    if _names(backbones):
        kwargs["backbones"] = _names(backbones)
    return kwargs


def write_probe(out: str, result: dict) -> None:
    from graft.bundle import atomic_write_bytes

    atomic_write_bytes(Path(out), (json.dumps(result, indent=2) + "\n").encode())


def print_probe(result: dict, echo) -> None:
    """The table along the Pareto front, the baseline, the verdict and the recommendation."""
    cands = {c["id"]: c for c in result["candidates"]}
    echo(f"{result['images']} images, {result['classes']} classes (training and validation splits); "
         f"budget: {_budget(result['budget'])}")
    echo(f"{'':2}{'candidate':36} {'prec':7} {'logistic (95% CI)':>22} {'k-NN':>7} {'LogME':>7} "
         f"{'ms':>7} {'MB':>7}")
    for row in result["options"]:
        cand = cands[row["candidate"]]
        low, high = row["interval"]
        mark = "*" if row["pareto"] else " "
        echo(f"{mark} {row['candidate']:36} {row['precision']:7} {row['estimate']:>7.1%} "
             f"[{low:.1%}, {high:.1%}] {cand['knn']['accuracy']:>7.1%} {cand['logme']:>7.3f} "
             f"{row['latency_ms']:>7.2f} {row['size_mb']:>7.2f}")
        if row.get("refused"):
            echo(f"    {row['refused']}")
    base = result["baseline"]
    echo(f"  {'baseline: raw pixels':36} {'':7} {base['estimate']:>7.1%} [{base['logistic']['interval'][0]:.1%}, "
         f"{base['logistic']['interval'][1]:.1%}] {base['knn']['accuracy']:>7.1%}")
    echo("* on the accuracy/latency Pareto front; estimates are out-of-fold logistic-probe accuracy")
    echo(result["verdict"]["text"])
    rec = result["recommendation"]
    echo(f"recommended: {rec['candidate']} {rec['precision']}: {rec['why']}")
    if result.get("pinned"):
        echo(f"pinned by the command line: {', '.join(result['pinned'])}")
    if rec.get("command"):
        echo(f"build it: {rec['command']}")


def _budget(budget: dict) -> str:
    parts = [f"latency <= {budget['latency_ms']:g} ms" if budget.get("latency_ms") else "",
             f"size <= {budget['size_mb']:g} MB" if budget.get("size_mb") else ""]
    return " and ".join(p for p in parts if p) or "none"


COMMANDS = [probe]
