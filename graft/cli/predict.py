"""`graft predict` and `graft inspect`: no TensorFlow is imported."""

from __future__ import annotations

import sys

import click

from graft.errors import GraftError

DEVICE_CHOICE = click.Choice(["auto", "cpu", "cuda", "tensorrt", "openvino"])


@click.command()
@click.argument("model", type=click.Path(path_type=str))
@click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=str))
@click.option("-o", "--output", type=click.Path(path_type=str), default=None,
              help="Result file: .csv, .jsonl or .parquet (a directory of parts). "
              "Without it, results go to the terminal.")
@click.option("--top-k", type=click.IntRange(1, 1000), default=3, show_default=True)
@click.option("--device", type=DEVICE_CHOICE, default="auto", show_default=True)
@click.option("--artifact", default=None, help="Which export of a bundle: FORMAT[:PRECISION], "
              "e.g. onnx, onnx:int8, tflite:float16 (default: the best verified export, in the "
              "order onnx float32, int8, dynamic, float16, then tflite the same).")
@click.option("--batch-size", type=click.IntRange(1, 4096), default=32, show_default=True)
@click.option("--decode-threads", type=click.IntRange(1, 256), default=None,
              help="Threads decoding and resizing images (per Ray actor with --engine ray; "
              "default: CPUs, at most 8; on Ray, the actor's CPU share).")
@click.option("--model-threads", type=click.IntRange(1, 256), default=None,
              help="Model threads: onnxruntime intra-op or LiteRT interpreter (default: every core "
              "this process may use; on Ray, the actor's CPU share).")
@click.option("--resume", is_flag=True, help="Finish an interrupted job of the same model and "
              "--top-k: keep the rows in OUTPUT, cut a torn last record, classify only the rest.")
@click.option("--overwrite", is_flag=True, help="Replace an existing OUTPUT.")
@click.option("--strict", is_flag=True, help="Exit 1 when any image failed.")
@click.option("--chunk-rows", type=click.IntRange(1, 10_000_000), default=None,
              help="Rows per durable write (default: one batch; 16 batches for Parquet).")
@click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True)
@click.option("--address", default=None, help="Ray cluster to join (default: start a local Ray).")
@click.option("--num-cpus", type=click.IntRange(1, 4096), default=None,
              help="CPUs of the local Ray started when no --address is given.")
@click.option("--actors", type=click.IntRange(1, 4096), default=None,
              help="Ray model replicas (default: as many as the nodes hold, up to one per two CPUs).")
@click.option("--cpus-per-actor", type=click.IntRange(1, 4096), default=None,
              help="CPUs each Ray actor reserves on its node (default: sized to the nodes).")
@click.option("--schedule-timeout", type=click.FloatRange(1), default=60, show_default=True,
              help="Seconds a Ray job waits for a result before it stops and says what is pending.")
@click.option("--progress/--no-progress", default=None,
              help="Progress bar on stderr (default: when stderr is a terminal).")
def predict(model, inputs, output, top_k, device, artifact, batch_size, decode_threads, model_threads,
            resume, overwrite, strict, chunk_rows, engine, address, num_cpus, actors, cpus_per_actor,
            schedule_timeout, progress):
    """Classify images with an exported MODEL (a bundle, a .onnx or a .tflite file).

    INPUTS are image files, directories (recursive), globs, or .txt/.csv files
    listing paths. Unreadable images become rows with an error.
    """
    if progress is None:
        progress = sys.stderr.isatty()
    if resume and overwrite:
        raise GraftError("--resume keeps an output and --overwrite replaces it: pass one of them")
    if output is None:
        if resume or overwrite or engine != "local":
            raise GraftError("--resume, --overwrite and --engine ray need an output file (-o OUT)")
        failed = _predict_to_terminal(model, inputs, top_k, device, artifact, batch_size,
                                      decode_threads, model_threads)
    else:
        from graft.runtime.batch import run_job

        summary = run_job(model, inputs, output, top_k=top_k, batch_size=batch_size,
                          decode_threads=decode_threads, device=device, artifact=artifact,
                          model_threads=model_threads, resume=resume, overwrite=overwrite,
                          chunk_rows=chunk_rows, engine=engine, address=address, num_cpus=num_cpus,
                          actors=actors, cpus_per_actor=cpus_per_actor,
                          schedule_timeout=schedule_timeout, progress=progress, on_start=announce)
        failed = summary.failed + summary.failed_before
        click.echo(f"{summary.ok} ok, {summary.failed} failed, {summary.resumed} already done "
                   f"({summary.failed_before} failed); {summary.total} inputs in {output}; "
                   f"{summary.rate:.1f} images/s", err=True)
    if strict and failed:
        sys.exit(1)


def announce(clf) -> None:
    """Say on stderr which export of a bundle runs, and why."""
    if clf.artifact:
        click.echo(f"model: {clf.describe_choice()}", err=True)


def _predict_to_terminal(model, inputs, top_k, device, artifact, batch_size, decode_threads,
                         model_threads) -> int:
    from graft.runtime.batch import iter_predictions
    from graft.runtime.pipeline import load_classifier

    clf = load_classifier(model, device, model_threads, artifact)
    announce(clf)
    ok = failed = 0
    for result in iter_predictions(clf, inputs, top_k=top_k, batch_size=batch_size,
                                   decode_threads=decode_threads):
        text = result.error or "  ".join(f"{label} {score:.4f}"
                                         for label, score in zip(result.labels, result.scores))
        click.echo(f"{result.path}\t{text}")
        ok, failed = ok + result.ok, failed + (not result.ok)
    click.echo(f"{ok} ok, {failed} failed", err=True)
    return failed


@click.command()
@click.argument("model", type=click.Path(path_type=str))
def inspect(model):
    """Show a bundle's or model file's labels, input spec, provenance and integrity."""
    from graft.describe import describe_model

    for line in describe_model(model):
        click.echo(line)


COMMANDS = [predict, inspect]
