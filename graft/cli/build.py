"""`graft build` and `graft demo`."""

from __future__ import annotations

from pathlib import Path

import click


@click.command()
@click.argument("data", type=click.Path(path_type=str))
@click.option("-o", "--output", "out", required=True, type=click.Path(path_type=str),
              help="Bundle directory to write (model.keras + graft.json).")
@click.option("--backbone", default="efficientnet_lite0", show_default=True,
              help="A registered backbone name, or a saved .keras model to cut.")
@click.option("--cut-layer", default=None, help="Layer of a source .keras model to cut at "
              "(default: its last pooled feature layer).")
@click.option("--weights", default=None,
              help="imagenet (the default for registered backbones), none, or a weights FILE. "
              "A source .keras model keeps its own weights by default.")
@click.option("--image-size", type=click.IntRange(16, 1024), default=None,
              help="Square input size in pixels (default: the backbone's native size).")
@click.option("--resize", type=click.Choice(["stretch", "crop"]), default="stretch", show_default=True)
@click.option("--epochs", type=click.IntRange(1, 10000), default=30, show_default=True)
@click.option("--batch-size", type=click.IntRange(1, 4096), default=32, show_default=True)
@click.option("--lr", type=click.FloatRange(0, min_open=True), default=1e-3, show_default=True)
@click.option("--dropout", type=click.FloatRange(0, 1, max_open=True), default=0.2, show_default=True)
@click.option("--val-split", type=click.FloatRange(0, 0.5), default=0.15, show_default=True)
@click.option("--test-split", type=click.FloatRange(0, 0.5), default=0.15, show_default=True)
@click.option("--patience", type=click.IntRange(1, 1000), default=5, show_default=True,
              help="Early stopping: epochs without val_loss improvement.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--cache-dir", type=click.Path(path_type=str), default=None,
              help="Feature cache (default: $GRAFT_CACHE or ~/.cache/graft).")
@click.option("--overwrite", is_flag=True, help="Replace an existing bundle at -o (swapped in when complete).")
@click.option("--extract", type=click.Choice(["auto", "onnxruntime", "keras"]), default="auto",
              show_default=True, help="Feature extractor: onnxruntime on the backbone converted to "
              "ONNX (parity-checked against Keras), or Keras. auto: onnxruntime, except for a first "
              "build of under 500 images, where converting costs more than it saves.")
@click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="Where features are extracted: here, or on Ray Data (TensorFlow-free workers).")
@click.option("--address", default=None, help="Ray cluster HOST:PORT to join (default: start a local Ray).")
@click.option("--num-cpus", type=click.IntRange(1, 4096), default=None,
              help="CPUs of the local Ray started when no --address is given.")
@click.option("--actors", type=click.IntRange(1, 4096), default=None,
              help="Ray actors extracting features (default: one per two CPUs of the cluster).")
@click.option("--decode-threads", type=click.IntRange(1, 256), default=None,
              help="Threads reading and decoding images (default: CPUs, at most 8; on Ray, per actor).")
@click.option("--model-threads", type=click.IntRange(1, 256), default=None,
              help="onnxruntime threads (default: onnxruntime's choice; on Ray, the actor's CPU share).")
def build(data, out, **options):
    """Train a new head on a frozen backbone from DATA (class folders or a path,label CSV)."""
    from graft.builder.build import BuildOptions, build_bundle
    from graft.cli.report import after_change

    had_report = Path(out, "report.html").is_file()  # the rebuilt bundle replaces the old one whole
    manifest = build_bundle(data, out, BuildOptions(**options))
    print_build_summary(out, manifest)
    after_change(out, had_report)


def print_build_summary(out: str, manifest: dict) -> None:
    metrics = manifest.get("metrics", {})
    dataset = manifest["dataset"]
    click.echo(f"bundle: {out}")
    click.echo(f"classes: {len(manifest['labels'])}  images: {dataset['images']}  "
               f"skipped: {len(dataset['skipped'])}  split: " +
               " ".join(f"{k}={v}" for k, v in dataset["split_counts"].items()))
    for row in dataset["skipped"][:20]:
        click.echo(f"  skipped {row['path']}: {row['reason']}")
    extraction = dataset.get("extraction")
    if extraction:
        click.echo(features_line(extraction))
    if metrics.get("accuracy") is not None:
        click.echo(f"test accuracy: {metrics['accuracy']:.4f} on {metrics['count']} images")


def features_line(extraction: dict) -> str:
    """How the features were computed, in one line."""
    line = (f"features: {extraction['extractor']} on {extraction['engine']}, {extraction['extracted']} "
            f"extracted, {extraction['cache_hits']} from the cache")
    parity = extraction.get("parity") or {}
    if parity.get("passed") is not None:
        line += (f"; parity vs Keras: max |diff| {parity['max_abs_diff']:.2g} on {parity['sample']} images "
                 f"({'passed' if parity['passed'] else 'failed'})")
    if extraction.get("reason"):
        line += f"; keras because: {extraction['reason']}"
    return line


@click.command()
@click.option("-o", "--output", "out", type=click.Path(path_type=str), default="graft-demo",
              show_default=True, help="Folder for the sample data and the bundle.")
def demo(out):
    """Offline end to end: sample images -> build -> export -> predict."""
    from graft.demo import run_demo

    run_demo(out, echo=click.echo)


COMMANDS = [build, demo]
