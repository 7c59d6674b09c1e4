"""`graft build` and `graft demo`."""

from __future__ import annotations

from pathlib import Path

import click

from graft.builder.backbones.registry import DEFAULT as DEFAULT_BACKBONE


@click.command()
@click.argument("data", type=click.Path(path_type=str))
@click.option("-o", "--output", "out", required=True, type=click.Path(path_type=str),
              help="Bundle directory to write (model.keras + graft.json).")
@click.option("--backbone", default=DEFAULT_BACKBONE, show_default=True,
              help="A registered backbone name, a saved .keras model to cut, or auto: run "
              "`graft probe` and build its recommendation (backbone, cut, resolution).")
@click.option("--cut-layer", default=None, help="Layer of a source .keras model to cut at "
              "(default: its last pooled feature layer), or an EfficientNet-Lite block end such as "
              "block5c (default: top). With --backbone auto: pins the cut.")
@click.option("--probe-backbones", default=None, help="--backbone auto: comma-separated backbones "
              "and .keras source models to probe (default: every backbone that works offline).")
@click.option("--latency-ms", type=click.FloatRange(0, min_open=True), default=None,
              help="--backbone auto: batch-1 latency budget; the export that meets it is made and verified.")
@click.option("--size-mb", type=click.FloatRange(0, min_open=True), default=None,
              help="--backbone auto: model file size budget; the export that meets it is made and verified.")
@click.option("--weights", default=None,
              help="imagenet (the default for registered backbones), none, or a weights FILE. "
              "A source .keras model keeps its own weights by default.")
@click.option("--image-size", type=click.IntRange(16, 1024), default=None,
              help="Square input size in pixels (default: the backbone's native size). With "
              "--backbone auto: pins the resolution.")
@click.option("--resize", type=click.Choice(["stretch", "crop"]), default="stretch", show_default=True)
@click.option("--epochs", type=click.IntRange(1, 10000), default=30, show_default=True)
@click.option("--min-steps", type=click.IntRange(0, 10**6), default=300, show_default=True,
              help="The head trains for at least this many optimizer steps: each epoch passes over "
              "a small training split as often as it takes (early stopping still stops it); 0: off.")
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
              help="Ray actors extracting features (default: as many as the nodes hold, up to one "
              "per two CPUs).")
@click.option("--cpus-per-actor", type=click.IntRange(1, 4096), default=None,
              help="CPUs each Ray actor reserves on its node (default: sized to the nodes).")
@click.option("--schedule-timeout", type=click.FloatRange(1), default=60, show_default=True,
              help="Seconds a Ray build waits for a result before it stops and says what is pending.")
@click.option("--decode-threads", type=click.IntRange(1, 256), default=None,
              help="Threads reading and decoding images (default: CPUs, at most 8; on Ray, per actor).")
@click.option("--model-threads", type=click.IntRange(1, 256), default=None,
              help="onnxruntime threads (default: every core this process may use; on Ray, the "
              "actor's CPU share).")
@click.option("--fine-tune", type=click.IntRange(0), default=0, show_default=True, metavar="N",
              help="After the head, train the top N blocks of the backbone with it, end to end on "
              "the images (0: head only). Blocks are the backbone's own (EfficientNet: stem, block1a "
              "... block7a, top); a source model without named blocks counts layers with weights. "
              "BatchNorm stays frozen. Costs a forward and backward pass per image and epoch.")
@click.option("--fine-tune-lr", type=click.FloatRange(0, min_open=True), default=1e-4,
              show_default=True, help="Adam learning rate of the fine-tuning stage (a tenth of "
              "the head's: the pretrained blocks move a little).")
@click.option("--fine-tune-epochs", type=click.IntRange(1, 10000), default=10, show_default=True,
              help="Most epochs of the fine-tuning stage (early stopping uses --patience).")
@click.option("--augment/--no-augment", default=True, show_default=True,
              help="Augment the fine-tuning stage's images (flip, zoom, rotation, brightness, contrast).")
@click.option("--augment-views", type=click.IntRange(0, 64), default=0, show_default=True, metavar="K",
              help="Train the head on K augmented views of each training image as well; their "
              "features are computed once and cached (costs K extra feature passes on a first build).")
@click.option("--flip/--no-flip", default=True, show_default=True,
              help="Random horizontal flips; turn off when a label depends on left and right.")
@click.option("--zoom", type=click.FloatRange(0, 0.5), default=0.1, show_default=True,
              help="Zoom in or out by up to this fraction and shift by half of it (0: off).")
@click.option("--rotation", type=click.FloatRange(0, 0.25), default=0.03, show_default=True,
              help="Rotate by up to this fraction of a full turn (0.03: about 11 degrees; 0: off).")
@click.option("--brightness", type=click.FloatRange(0, 1), default=0.1, show_default=True,
              help="Shift brightness by up to this fraction of 255 (0: off).")
@click.option("--contrast", type=click.FloatRange(0, 1), default=0.1, show_default=True,
              help="Scale contrast by up to 1 +- this (0: off).")
def build(data, out, **options):
    """Train a new head on a frozen backbone from DATA (class folders or a path,label CSV)."""
    from graft.builder.build import BuildOptions, build_bundle
    from graft.cli.report import after_change
    from graft.quiet import import_tensorflow

    import_tensorflow()  # without its C++ start-up lines (shown under --debug)
    had_report = Path(out, "report.html").is_file()  # the rebuilt bundle replaces the old one whole
    budget = {"latency_ms": options.pop("latency_ms"), "size_mb": options.pop("size_mb")}
    candidates = options.pop("probe_backbones")
    if options["backbone"] == "auto":
        from graft.cli.auto import build_auto

        manifest = build_auto(data, out, BuildOptions(**options), budget, echo=click.echo,
                              backbones=[b.strip() for b in candidates.split(",")] if candidates else None)
    elif any(v is not None for v in budget.values()) or candidates:
        raise click.UsageError("--latency-ms, --size-mb and --probe-backbones apply to --backbone auto")
    else:
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
    for stage in manifest.get("training", {}).get("stages", []):
        if stage.get("name") == "fine_tune":
            click.echo(fine_tune_line(stage))
    if metrics.get("accuracy") is not None:
        click.echo(f"test accuracy: {metrics['accuracy']:.4f} on {metrics['count']} images")


def fine_tune_line(stage: dict) -> str:
    """What fine-tuning did, in one line: blocks, epochs, accuracy before and after."""
    settings, before, after = stage["settings"], stage["metrics_before"], stage["metrics_after"]

    def accuracy(scores: dict) -> str:
        return "-" if scores.get("accuracy") is None else f"{scores['accuracy']:.4f}"

    unit = settings["unit"] if settings["blocks"] != 1 else settings["unit"].rstrip("s")
    return (f"fine-tuned: top {settings['blocks']} {unit} "
            f"({', '.join(settings['unfrozen_blocks'][-3:])}), {stage['epochs_run']} epochs, "
            f"kept {stage['kept']}; val accuracy {accuracy(before['val'])} -> {accuracy(after['val'])}, "
            f"test {accuracy(before['test'])} -> {accuracy(after['test'])}")


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
    from graft.quiet import import_tensorflow

    import_tensorflow()
    run_demo(out, echo=click.echo)


COMMANDS = [build, demo]
