"""The ``graft`` command. Heavy modules are imported inside each command, so
``graft --help``, ``graft predict`` and ``graft serve`` never load TensorFlow."""

from __future__ import annotations

import os
import sys
import warnings

import click

from graft.errors import GraftError

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # TensorFlow's C++ logs, when a command loads it

DEVICE_CHOICE = click.Choice(["auto", "cpu", "cuda", "tensorrt", "openvino"])


class GraftGroup(click.Group):
    """Turns GraftError into one line on stderr and its exit code (``--debug``: traceback)."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except GraftError as exc:
            if ctx.obj and ctx.obj.get("debug"):
                raise
            click.echo(f"error: {exc}", err=True)
            sys.exit(exc.exit_code)


def _show_warning(message, category, filename, lineno, file=None, line=None):
    click.echo(f"warning: {message}", err=True)


@click.group(cls=GraftGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show tracebacks instead of one-line errors.")
@click.version_option(package_name="graft")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """graft: a folder of pictures in, a classifier that runs anywhere out."""
    ctx.obj = {"debug": debug}
    if not debug:
        warnings.showwarning = _show_warning


def main() -> None:
    cli(prog_name="graft")


# --------------------------------------------------------------------------- build
@cli.command()
@click.argument("data", type=click.Path(path_type=str))
@click.option("-o", "--output", "out", required=True, type=click.Path(path_type=str),
              help="Bundle directory to write (model.keras + graft.json).")
@click.option("--backbone", default="mobilenet_v2", show_default=True,
              help="A registered backbone name, or a saved .keras model to cut.")
@click.option("--cut-layer", default=None, help="Layer of a source .keras model to cut at "
              "(default: its last pooled feature layer).")
@click.option("--weights", default=None,
              help="imagenet (Keras' download and cache; the default for registered backbones), "
              "none, or a weights FILE. A source .keras model keeps its own weights by default.")
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
@click.option("--overwrite", is_flag=True, help="Replace an existing bundle at -o.")
def build(data, out, **options):
    """Train a new head on a frozen backbone from DATA (class folders or a path,label CSV)."""
    from graft.builder.train import BuildOptions, build_bundle

    manifest = build_bundle(data, out, BuildOptions(**options))
    _print_build_summary(out, manifest)


def _print_build_summary(out: str, manifest: dict) -> None:
    metrics = manifest.get("metrics", {})
    dataset = manifest["dataset"]
    click.echo(f"bundle: {out}")
    click.echo(f"classes: {len(manifest['labels'])}  images: {dataset['images']}  "
               f"skipped: {len(dataset['skipped'])}  split: " +
               " ".join(f"{k}={v}" for k, v in dataset["split_counts"].items()))
    for row in dataset["skipped"][:20]:
        click.echo(f"  skipped {row['path']}: {row['reason']}")
    if "accuracy" in metrics:
        click.echo(f"test accuracy: {metrics['accuracy']:.4f} on {metrics['count']} images")


# -------------------------------------------------------------------------- export
FORMAT_CHOICE = click.Choice(["onnx", "tflite", "all"])
QUANTIZE_CHOICE = click.Choice(["none", "fp16", "dynamic", "int8", "all"])


def _budget_options(command):
    """Budget flags shared by `graft export` and `graft verify` (percent / points)."""
    flags = [
        click.option("--f32-min-agreement", type=click.FloatRange(0, 100), default=None,
                     help="float32: minimum top-1 agreement with Keras, % [100]."),
        click.option("--f32-max-diff", type=click.FloatRange(0), default=None,
                     help="float32: maximum |dprob| vs Keras [1e-4]."),
        click.option("--f16-min-agreement", type=click.FloatRange(0, 100), default=None,
                     help="float16: minimum top-1 agreement, % [99.5]."),
        click.option("--int8-min-agreement", type=click.FloatRange(0, 100), default=None,
                     help="int8 and dynamic: minimum top-1 agreement, % [98]."),
        click.option("--int8-max-drop", type=click.FloatRange(0, 100), default=None,
                     help="int8 and dynamic: maximum top-1 accuracy drop, points [1.0]."),
    ]
    for flag in reversed(flags):
        command = flag(command)
    return command


def _budgets(f32_min_agreement, f32_max_diff, f16_min_agreement, int8_min_agreement, int8_max_drop) -> dict:
    pairs = {("float32", "min_agreement"): f32_min_agreement, ("float32", "max_abs_diff"): f32_max_diff,
             ("float16", "min_agreement"): f16_min_agreement,
             ("int8", "min_agreement"): int8_min_agreement, ("int8", "max_accuracy_drop"): int8_max_drop}
    budgets: dict = {}
    for (family, key), value in pairs.items():
        if value is not None:
            budgets.setdefault(family, {})[key] = value if key == "max_abs_diff" else value / 100
    return budgets


@cli.command()
@click.argument("bundle_dir", metavar="BUNDLE", type=click.Path(path_type=str))
@click.option("--format", "fmt", type=FORMAT_CHOICE, default="onnx", show_default=True)
@click.option("--quantize", type=QUANTIZE_CHOICE, default="none", show_default=True,
              help="none (float32), fp16, dynamic (int8 weights), int8 (static, calibrated) or all.")
@click.option("--opset", type=click.IntRange(13, 21), default=17, show_default=True)
@click.option("--calibration-size", type=click.IntRange(1, 100000), default=200, show_default=True,
              help="int8: calibration images, drawn class-balanced from the training split.")
@click.option("--calibration-method", type=click.Choice(["minmax", "entropy", "percentile"]),
              default="minmax", show_default=True, help="ONNX int8 activation calibration.")
@click.option("--io-dtype", type=click.Choice(["float32", "int8", "uint8"]), default="float32",
              show_default=True, help="TFLite int8: dtype of the model's input and output.")
@click.option("--exclude-nodes", default="", help="int8: comma-separated nodes to keep in float "
              "(ONNX node names, TFLite tensor names; prefix onnx: or tflite: to target one format).")
@click.option("--auto-exclude", is_flag=True, help="int8: when the budget breaks, keep the worst "
              "layers in float until it holds, and report what that cost.")
@click.option("--no-verify", is_flag=True, help="Skip the check against Keras on the test split.")
@click.option("--data", "data_root", type=click.Path(path_type=str), default=None,
              help="The dataset's root, if it moved since `graft build` (for the checks).")
@_budget_options
def export(bundle_dir, fmt, quantize, opset, calibration_size, calibration_method, io_dtype,
           exclude_nodes, auto_exclude, no_verify, data_root, **budget_flags):
    """Export a bundle's model to ONNX / TFLite at each precision and check each against Keras."""
    from graft.exporters import registry
    from graft.exporters.export import export_bundle
    from graft.exporters.quantize import ExportOptions

    options = ExportOptions(opset=opset, calibration_size=calibration_size,
                            calibration_method=calibration_method, io_dtype=io_dtype,
                            exclude_nodes=[n.strip() for n in exclude_nodes.split(",") if n.strip()],
                            auto_exclude=auto_exclude, data_root=data_root)
    export_bundle(bundle_dir, registry.select(fmt, quantize), options, verify_exports=not no_verify,
                  budgets=_budgets(**budget_flags), echo=click.echo)


# -------------------------------------------------------------------------- verify
@cli.command()
@click.argument("bundle_dir", metavar="BUNDLE", type=click.Path(path_type=str))
@click.option("--threads", type=click.IntRange(1, 256), default=None,
              help="Threads per engine (default: all CPU cores).")
@click.option("--no-speed", is_flag=True, help="Skip the latency and throughput measurements.")
@click.option("--data", "data_root", type=click.Path(path_type=str), default=None,
              help="The dataset's root, if it moved since `graft build`.")
@_budget_options
def verify(bundle_dir, threads, no_speed, data_root, **budget_flags):
    """Run every exported file on the test split; print one table; exit 1 if a budget breaks."""
    from rich.console import Console
    from rich.table import Table

    from graft.errors import CheckFailed
    from graft.exporters.verify import COLUMNS, REPORT_JSON, REPORT_MD, table_cells, verify_bundle

    report = verify_bundle(bundle_dir, _budgets(**budget_flags), data_root, threads, not no_speed)
    table = Table(title=f"{report['bundle']}: {report['images']} {report['split']} images, Keras "
                        f"accuracy {report['keras_accuracy']:.2%}, {report['threads']} threads")
    for i, column in enumerate(COLUMNS):
        table.add_column(column, justify="left" if i < 2 or i == len(COLUMNS) - 1 else "right")
    for row in report["rows"]:
        table.add_row(*table_cells(row))
    Console(width=200).print(table)
    click.echo(f"wrote {bundle_dir}/{REPORT_JSON} and {bundle_dir}/{REPORT_MD}")
    failed = [row for row in report["rows"] if not row["passed"]]
    if failed:
        raise CheckFailed(f"{len(failed)} of {len(report['rows'])} exports break their budget: "
                          + "; ".join(f"{r['path']} ({', '.join(r['breaches'])})" for r in failed))


# ------------------------------------------------------------------------- predict
@cli.command()
@click.argument("model", type=click.Path(path_type=str))
@click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=str))
@click.option("-o", "--output", type=click.Path(path_type=str), default=None,
              help="Write results to a .csv or .jsonl file instead of the terminal.")
@click.option("--top-k", type=click.IntRange(1, 1000), default=3, show_default=True)
@click.option("--device", type=DEVICE_CHOICE, default="auto", show_default=True)
@click.option("--artifact", default=None, help="Which export of a bundle: FORMAT[:PRECISION], "
              "e.g. onnx, onnx:int8, tflite:float16 (default onnx:float32).")
@click.option("--threads", type=click.IntRange(1, 256), default=None,
              help="Threads per engine (ONNX Runtime intra-op, LiteRT interpreter).")
def predict(model, inputs, output, top_k, device, artifact, threads):
    """Classify images with an exported MODEL (a bundle, a .onnx or a .tflite file)."""
    from graft.runtime.classifier import Classifier
    from graft.runtime.results import expand_inputs, write_results

    clf = Classifier.load(model, device=device, threads=threads, artifact=artifact)
    paths = expand_inputs(inputs)
    rows = []
    for path in paths:
        try:
            rows.append({"path": str(path), "predictions": clf.predict(path, top_k=top_k), "error": ""})
        except GraftError as exc:
            rows.append({"path": str(path), "predictions": [], "error": str(exc)})
    if output:
        write_results(rows, output)
        click.echo(f"wrote {len(rows)} rows to {output}")
    else:
        for row in rows:
            text = row["error"] or "  ".join(f"{p.label} {p.score:.4f}" for p in row["predictions"])
            click.echo(f"{row['path']}\t{text}")
    failed = sum(1 for row in rows if row["error"])
    click.echo(f"{len(rows) - failed} ok, {failed} failed (device: {clf.device})", err=True)


# ------------------------------------------------------------------------- inspect
@cli.command()
@click.argument("model", type=click.Path(path_type=str))
def inspect(model):
    """Show a bundle's or model file's labels, input spec, provenance and integrity."""
    from graft.inspect import describe_model

    for line in describe_model(model):
        click.echo(line)


# ---------------------------------------------------------------------------- demo
@cli.command()
@click.option("-o", "--output", "out", type=click.Path(path_type=str), default="graft-demo",
              show_default=True, help="Folder for the sample data and the bundle.")
def demo(out):
    """Offline end to end: sample images -> build -> export ONNX -> predict."""
    from graft.demo import run_demo

    run_demo(out, echo=click.echo)
