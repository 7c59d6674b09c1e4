"""`graft serve`: the Open Inference Protocol over HTTP; no TensorFlow is imported."""

from __future__ import annotations

import click

from graft.cli.predict import DEVICE_CHOICE


class InstancesType(click.ParamType):
    """``auto`` or a whole number from 1 to 256."""

    name = "auto|N"

    def convert(self, value, param, ctx):
        if value is None or value == "auto" or isinstance(value, int):
            return None if value in (None, "auto") else value
        if not str(value).isdigit() or not 1 <= int(value) <= 256:
            self.fail(f"expected 'auto' or a whole number from 1 to 256; received {value!r}", param, ctx)
        return int(value)


INSTANCES = InstancesType()


@click.command()
@click.argument("model", metavar="MODEL_OR_REPOSITORY", type=click.Path(path_type=str, readable=False))
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on (0.0.0.0 for every interface).")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True,
              help="Port to listen on (0 picks a free one).")
@click.option("--max-batch-size", type=click.IntRange(1, 4096), default=None,
              help="Combine requests into batches of up to this many images (1: never combine). "
              "Default: combine (up to 32) only if a measurement at start-up shows it pays on this device; "
              "a request may carry at most this many (default 32) images either way.")
@click.option("--max-queue-delay-ms", type=click.FloatRange(0, 10_000), default=2.0, show_default=True,
              help="How long a batch may wait for more requests.")
@click.option("--max-queue", type=click.IntRange(1, 1_000_000), default=256, show_default=True,
              help="Queued requests per model version before answering 503.")
@click.option("--timeout-ms", type=click.FloatRange(1, 3_600_000), default=30_000, show_default=True,
              help="A request not answered within this time gets 504.")
@click.option("--device", type=DEVICE_CHOICE, default="auto", show_default=True)
@click.option("--artifact", "artifacts", multiple=True,
              help="Which export of a bundle: FORMAT[:PRECISION] for every bundle, or "
              "NAME=FORMAT[:PRECISION] for one model of a repository; repeatable (default: each "
              "bundle's best verified export, as `graft predict`).")
@click.option("--instances", type=INSTANCES, default="auto", show_default=True,
              help="Engines per model version, each with its own threads; a request runs on a free one. "
              "auto: on the CPU one per core, one thread each (with --model-threads T, cores / T); "
              "on a GPU one.")
@click.option("--instance-kind", type=click.Choice(["thread", "process"]), default="thread",
              show_default=True,
              help="Where instances run: in threads of the server, or each in a worker process of its "
              "own that decodes and runs the model there (a crash in the engine costs one instance, "
              "which is replaced, not the server; more CPU and memory per request).")
@click.option("--model-threads", type=click.IntRange(1, 1024), default=None,
              help="Threads per instance: onnxruntime intra-op or LiteRT interpreter (default: 1 with "
              "--instances auto, else cores / instances).")
@click.option("--pin-cores/--no-pin-cores", default=False, show_default=True,
              help="Keep each CPU instance on cores of its own (when instances x threads fit the cores): "
              "no instance migrates between cores, so its caches stay warm.")
@click.option("--spin-wait/--no-spin-wait", default=False, show_default=True,
              help="Let onnxruntime's idle threads spin between calls (CPU): a little lower latency "
              "with several threads per instance, CPU taken from the other instances.")
@click.option("--lone-request-threads", type=click.IntRange(0, 1024), default=0, show_default=True,
              help="Load one more engine, of this many threads (e.g. the number of cores), for a request "
              "that is alone: with no other request about for a second and every instance idle, it runs "
              "there, on every core, at lower latency (more memory: one engine more; 0: off). CPU "
              "instances in threads only.")
@click.option("--max-body-mb", type=click.FloatRange(0.001, 4096), default=32, show_default=True,
              help="Largest request body; bigger ones get 413.")
@click.option("--max-pixels", type=click.IntRange(1), default=50_000_000, show_default=True,
              help="Largest image (width x height, read from the header before decoding).")
@click.option("--max-request-pixels", type=click.IntRange(1), default=100_000_000, show_default=True,
              help="Most pixels per request (width x height summed over its images, read from their "
              "headers before decoding); more get 413.")
@click.option("--body-timeout-s", type=click.FloatRange(0.1, 3600), default=60, show_default=True,
              help="A request body not fully received within this time gets 408 and the connection "
              "is closed.")
@click.option("--limit-concurrency", type=click.IntRange(1, 1_000_000), default=1024, show_default=True,
              help="Most open connections; a request on one more gets 503.")
@click.option("--log-level", type=click.Choice(["critical", "error", "warning", "info", "debug"]),
              default="info", show_default=True)
def serve(model, max_body_mb, **options):
    """Serve MODEL_OR_REPOSITORY (a .onnx or .tflite file, a bundle, or NAME/VERSION/ folders) over HTTP.

    Speaks the Open Inference Protocol (KServe v2, as Triton does) and offers
    POST /v2/models/NAME/classify for image uploads; a page to try it at /;
    metrics at /metrics.
    """
    from graft.runtime.server import ServerConfig, serve as run_server

    options["artifacts"] = tuple(options["artifacts"])
    if options["lone_request_threads"] and options["instance_kind"] == "process":
        raise click.BadOptionUsage("lone_request_threads", "--lone-request-threads works with instances in "
                                   "threads; leave it out with --instance-kind process")
    config = ServerConfig(max_body_bytes=int(max_body_mb * 1024 * 1024), **options)
    run_server(model, config, echo=click.echo)


COMMANDS = [serve]
