"""The ``graft`` command. Heavy modules are imported inside each command, so
``graft --help``, ``graft predict`` and ``graft serve`` never load TensorFlow."""

from __future__ import annotations

import os
import sys
import warnings

import click

from graft.errors import GraftError, first_line

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # TensorFlow's C++ logs, when a command loads it

DEVICE_CHOICE = click.Choice(["auto", "cpu", "cuda", "tensorrt", "openvino"])


class GraftGroup(click.Group):
    """Turns GraftError into one line on stderr and its exit code (``--debug``: traceback)."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (GraftError, OSError, ImportError) as exc:
            if ctx.obj and ctx.obj.get("debug"):
                raise
            click.echo(f"error: {_one_line(exc)}", err=True)
            sys.exit(exc.exit_code if isinstance(exc, GraftError) else 2)


_EXTRAS = {"tensorflow": "build", "keras": "build", "tf2onnx": "build", "onnx": "build",
           "sklearn": "build", "ai_edge_litert": "litert", "starlette": "serve", "uvicorn": "serve",
           "prometheus_client": "serve", "multipart": "serve", "ray": "ray", "pyarrow": "parquet"}


def _one_line(exc: BaseException) -> str:
    """GraftErrors say it all; a missing extra or an OS error gets what to do."""
    if isinstance(exc, ImportError) and not isinstance(exc, GraftError):
        module = (exc.name or "").split(".")[0]
        if module in _EXTRAS:
            return f"this command needs {module}, which is not installed; pip install 'graft[{_EXTRAS[module]}]'"
    if isinstance(exc, OSError) and not isinstance(exc, GraftError) and exc.filename:
        return f"{exc.filename}: {exc.strerror or first_line(exc)}"
    return first_line(exc, limit=2000)


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
    if metrics.get("accuracy") is not None:
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
              help="Result file: .csv, .jsonl or .parquet (a directory of parts). "
              "Without it, results go to the terminal.")
@click.option("--top-k", type=click.IntRange(1, 1000), default=3, show_default=True)
@click.option("--device", type=DEVICE_CHOICE, default="auto", show_default=True)
@click.option("--artifact", default=None, help="Which export of a bundle: FORMAT[:PRECISION], "
              "e.g. onnx, onnx:int8, tflite:float16 (default onnx:float32).")
@click.option("--batch-size", type=click.IntRange(1, 4096), default=32, show_default=True)
@click.option("--threads", type=click.IntRange(1, 256), default=None,
              help="Threads decoding and resizing images, per Ray actor with --engine ray "
              "(default: CPUs, at most 8).")
@click.option("--model-threads", type=click.IntRange(1, 256), default=None,
              help="Model threads: onnxruntime intra-op or LiteRT interpreter (default: the engine's choice).")
@click.option("--resume", is_flag=True, help="Finish an interrupted job: keep the rows in "
              "OUTPUT, cut a torn last record, classify only the rest.")
@click.option("--overwrite", is_flag=True, help="Replace an existing OUTPUT.")
@click.option("--strict", is_flag=True, help="Exit 1 when any image failed.")
@click.option("--chunk-rows", type=click.IntRange(1, 10_000_000), default=None,
              help="Rows per durable write (default: one batch; 16 batches for Parquet).")
@click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True)
@click.option("--address", default=None, help="Ray cluster to join (default: start a local Ray).")
@click.option("--num-cpus", type=click.IntRange(1, 4096), default=None,
              help="CPUs of the local Ray started when no --address is given.")
@click.option("--actors", type=click.IntRange(1, 4096), default=None,
              help="Ray model replicas (default: one per two CPUs of the cluster).")
@click.option("--progress/--no-progress", default=None,
              help="Progress bar on stderr (default: when stderr is a terminal).")
def predict(model, inputs, output, top_k, device, artifact, batch_size, threads, model_threads, resume,
            overwrite, strict, chunk_rows, engine, address, num_cpus, actors, progress):
    """Classify images with an exported MODEL (a bundle, a .onnx or a .tflite file).

    INPUTS are image files, directories (recursive), globs, or .txt/.csv files
    listing paths. Unreadable images become rows with an error.
    """
    if progress is None:
        progress = sys.stderr.isatty()
    if output is None:
        if resume or overwrite or engine != "local":
            raise GraftError("--resume, --overwrite and --engine ray need an output file (-o OUT)")
        failed = _predict_to_terminal(model, inputs, top_k, device, artifact, batch_size, threads,
                                      model_threads)
    else:
        from graft.runtime.batch import run_job

        summary = run_job(model, inputs, output, top_k=top_k, batch_size=batch_size, threads=threads,
                          device=device, artifact=artifact, model_threads=model_threads, resume=resume,
                          overwrite=overwrite, chunk_rows=chunk_rows, engine=engine,
                          address=address, num_cpus=num_cpus, actors=actors, progress=progress)
        failed = summary.failed + summary.failed_before
        click.echo(f"{summary.ok} ok, {summary.failed} failed, {summary.resumed} already done "
                   f"({summary.failed_before} failed); {summary.total} inputs in {output}; "
                   f"{summary.rate:.1f} images/s", err=True)
    if strict and failed:
        sys.exit(1)


def _predict_to_terminal(model, inputs, top_k, device, artifact, batch_size, threads,
                         model_threads) -> int:
    from graft.runtime.batch import iter_predictions

    ok = failed = 0
    for result in iter_predictions(model, inputs, top_k=top_k, batch_size=batch_size,
                                   threads=threads, device=device, artifact=artifact,
                                   model_threads=model_threads):
        text = result.error or "  ".join(f"{label} {score:.4f}"
                                         for label, score in zip(result.labels, result.scores))
        click.echo(f"{result.path}\t{text}")
        ok, failed = ok + result.ok, failed + (not result.ok)
    click.echo(f"{ok} ok, {failed} failed", err=True)
    return failed


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


# --------------------------------------------------------------------------- serve
@cli.command()
@click.argument("model", metavar="MODEL_OR_REPOSITORY", type=click.Path(path_type=str))
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on (0.0.0.0 for every interface).")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True,
              help="Port to listen on (0 picks a free one).")
@click.option("--max-batch-size", type=click.IntRange(1, 4096), default=32, show_default=True,
              help="Most images run as one batch (1 turns batching off).")
@click.option("--max-queue-delay-ms", type=click.FloatRange(0, 10_000), default=2.0, show_default=True,
              help="How long a batch may wait for more requests.")
@click.option("--max-queue", type=click.IntRange(1, 1_000_000), default=256, show_default=True,
              help="Queued requests per model version before answering 503.")
@click.option("--timeout-ms", type=click.FloatRange(1, 3_600_000), default=30_000, show_default=True,
              help="A request not answered within this time gets 504.")
@click.option("--device", type=DEVICE_CHOICE, default="auto", show_default=True)
@click.option("--threads", type=click.IntRange(1, 1024), default=None,
              help="ONNX Runtime threads per model (default: all cores).")
@click.option("--max-body-mb", type=click.FloatRange(0.001, 4096), default=32, show_default=True,
              help="Largest request body; bigger ones get 413.")
@click.option("--max-pixels", type=click.IntRange(1), default=50_000_000, show_default=True,
              help="Largest image (width x height, read from the header before decoding).")
@click.option("--log-level", type=click.Choice(["critical", "error", "warning", "info", "debug"]),
              default="info", show_default=True)
def serve(model, max_body_mb, **options):
    """Serve MODEL_OR_REPOSITORY (a .onnx file, a bundle, or NAME/VERSION/ folders) over HTTP.

    Speaks the Open Inference Protocol (KServe v2, as Triton does) and offers
    POST /v2/models/NAME/classify for image uploads; metrics at /metrics.
    """
    from graft.runtime.server import ServerConfig, serve as run_server

    config = ServerConfig(max_body_bytes=int(max_body_mb * 1024 * 1024), **options)
    run_server(model, config, echo=click.echo)
