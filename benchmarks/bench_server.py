"""Closed-loop load against `graft serve`, batching on vs off, against in-process predict.

    python benchmarks/bench_server.py [--model BUNDLE_OR_ONNX] [--requests 400]

Without --model it makes a bundle with `graft build` + `graft export`
(EfficientNet-Lite0, 224x224, ONNX float32; benchmarks/common.py; needs
graft[build]) once, under --workdir.
For each server (--max-batch-size 32, then 1 = batching off) and each
concurrency (1, 8, 32, 64), that many clients each send one JPEG to
POST /v2/models/NAME/classify, wait for the answer and send the next, until
--requests answers came back; both servers run side by side and the runs
interleave, each point --repeats times, medians quoted. The peer, run in the
same process, is Classifier.predict on the same JPEG bytes. Prints throughput,
p50 and p99, the ratios the targets are stated in, and the model's own batch
efficiency in process (ms per image at batch 1 vs 32), which bounds what
batching can win on the machine.
"""

from __future__ import annotations

import argparse
import http.client
import io
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import bench_bundle, write_results  # noqa: E402

CONCURRENCY = (1, 8, 32, 64)


# ---------------------------------------------------------------- the model
def sample_jpeg(size: int) -> bytes:
    from PIL import Image

    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


# ---------------------------------------------------------------- the server
class Server:
    def __init__(self, model: Path, max_batch_size: int, extra: list[str]):
        command = [sys.executable, "-m", "graft", "serve", str(model), "--port", "0", "--log-level",
                   "warning", "--max-batch-size", str(max_batch_size), *extra]
        env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env)
        line = self.process.stdout.readline()
        if " on http://" not in line:
            self.process.kill()
            raise SystemExit(f"graft serve did not start: {line}")
        self.host, port = line.rsplit("http://", 1)[1].strip().rsplit(":", 1)
        self.port = int(port)
        self.name = line.split("serving ", 1)[1].split(":", 1)[0]

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(30)


def closed_loop(server: Server, body: bytes, concurrency: int, total: int) -> tuple[float, np.ndarray]:
    """``concurrency`` clients, each one request at a time; (seconds, latencies in seconds)."""
    path = f"/v2/models/{server.name}/classify?top_k=1"
    latencies: list[float] = []
    lock = threading.Lock()
    sent = [0]

    def client():
        connection = http.client.HTTPConnection(server.host, server.port, timeout=120)
        connection.connect()
        # http.client sends headers and body in two writes; without TCP_NODELAY, Nagle's
        # algorithm and the server's delayed ACK add 40 ms to every request.
        connection.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        while True:
            with lock:
                if sent[0] >= total:
                    break
                sent[0] += 1
            start = time.perf_counter()
            connection.request("POST", path, body, {"Content-Type": "image/jpeg"})
            response = connection.getresponse()
            response.read()
            elapsed = time.perf_counter() - start
            if response.status != 200:
                raise SystemExit(f"HTTP {response.status} under load")
            with lock:
                latencies.append(elapsed)
        connection.close()

    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.perf_counter() - start, np.array(latencies)


def in_process(model: Path, body: bytes, count: int, threads: int | None = None) -> np.ndarray:
    from graft.runtime.classifier import Classifier

    clf = Classifier.load(model, model_threads=threads)
    for _ in range(3):
        clf.predict(body, top_k=1)
    times = []
    for _ in range(count):
        start = time.perf_counter()
        clf.predict(body, top_k=1)
        times.append(time.perf_counter() - start)
    return np.array(times)


def batch_efficiency(model: Path, batch: int = 32, threads: int | None = None) -> tuple[float, float]:
    """In-process ms per image at batch 1 and at ``batch``: the most batching can win on this CPU."""
    from graft.runtime.classifier import Classifier

    clf = Classifier.load(model, model_threads=threads)
    height, width = clf.input_size
    pixels = np.random.default_rng(0).integers(0, 256, (batch, height, width, 3), dtype=np.uint8)
    per_image = []
    for n in (1, batch):
        clf.predict_pixels(pixels[:n], batch)
        times = []
        for _ in range(max(3, 2 * batch // n)):
            start = time.perf_counter()
            clf.predict_pixels(pixels[:n], batch)
            times.append((time.perf_counter() - start) / n)
        per_image.append(float(np.median(times)) * 1e3)
    return per_image[0], per_image[1]


# ---------------------------------------------------------------- main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=None,
                        help="A bundle or .onnx file (default: an EfficientNet-Lite0 bundle made by graft).")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "graft-bench-server")
    parser.add_argument("--requests", type=int, default=256, help="Requests per run.")
    parser.add_argument("--repeats", type=int, default=3, help="Runs per point; medians are quoted.")
    parser.add_argument("--image-size", type=int, default=256, help="Side of the JPEG sent (pixels).")
    parser.add_argument("--concurrency", type=int, nargs="+", default=list(CONCURRENCY))
    parser.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads for "
                        "the servers and the in-process peer (default: ONNX Runtime's choice).")
    args = parser.parse_args()
    model = args.model or bench_bundle(args.workdir)
    body = sample_jpeg(args.image_size)
    one, many = batch_efficiency(model, threads=args.threads)
    print(f"model: {model}  threads: {args.threads or 'default'}\nin-process ms per image: batch 1 {one:.2f}, batch 32 {many:.2f} "
          f"(batching can win at most {one / many:.2f}x in compute)")
    extra = ["--model-threads", str(args.threads)] if args.threads else []
    servers = {"batched": Server(model, 32, extra), "unbatched": Server(model, 1, extra)}
    runs: dict[tuple[str, int], list[tuple[float, float, float]]] = {}
    peer: list[float] = []
    try:
        for server in servers.values():
            closed_loop(server, body, 8, 64)  # warm up
        for concurrency in args.concurrency:
            for _ in range(args.repeats):
                # interleaved, so drifting load on the machine hits both servers alike
                for label, server in servers.items():
                    seconds, lat = closed_loop(server, body, concurrency, args.requests)
                    runs.setdefault((label, concurrency), []).append(
                        (len(lat) / seconds, np.median(lat) * 1e3, np.percentile(lat, 99) * 1e3))
                if concurrency == 1:
                    times = in_process(model, body, min(args.requests, 100), args.threads)
                    peer.append(float(np.median(times)) * 1e3)
            for label in servers:
                row = np.median(runs[(label, concurrency)], axis=0)
                print(f"{label:9s} c={concurrency:<3d} {row[0]:8.1f} req/s  p50 {row[1]:8.2f} ms  "
                      f"p99 {row[2]:8.2f} ms", flush=True)
    finally:
        for server in servers.values():
            server.stop()
    results = {key: tuple(np.median(rows, axis=0)) for key, rows in runs.items()}
    peer_ms = float(np.median(peer)) if peer else None
    report(results, peer_ms, args.concurrency)
    write_results("bench_server", {
        "setup": {"model": str(model.name), "requests": args.requests, "repeats": args.repeats,
                  "image_size": args.image_size, "model_threads": args.threads},
        "in_process_ms_per_image": {"batch1": round(one, 2), "batch32": round(many, 2),
                                    "batching_ceiling": round(one / many, 2)},
        "points": [{"server": label, "concurrency": c, "req_per_s": round(float(r[0]), 1),
                    "p50_ms": round(float(r[1]), 2), "p99_ms": round(float(r[2]), 2)}
                   for (label, c), r in sorted(results.items())],
        "in_process_p50_ms": None if peer_ms is None else round(peer_ms, 2),
        "targets": {"batched_vs_unbatched_c32": 3.0, "p99_over_p50": 3.0, "c1_gap_ms": 2.0}})


def report(results, peer_ms, levels) -> None:
    print("\n| concurrency | batched req/s | batched p50 / p99 ms | unbatched req/s | unbatched p50 / p99 ms |")
    print("|---|---|---|---|---|")
    for c in levels:
        b, u = results[("batched", c)], results[("unbatched", c)]
        print(f"| {c} | {b[0]:.1f} | {b[1]:.1f} / {b[2]:.1f} | {u[0]:.1f} | {u[1]:.1f} / {u[2]:.1f} |")
    if 32 in levels:
        b, u = results[("batched", 32)], results[("unbatched", 32)]
        print(f"\nc=32 throughput batched / unbatched: {b[0] / u[0]:.2f}x (target >= 3x)")
        print(f"c=32 batched p99 / p50: {b[2] / b[1]:.2f} (target <= 3)")
    if peer_ms is not None:
        gap = results[("batched", 1)][1] - peer_ms
        print(f"c=1 in-process Classifier.predict p50 {peer_ms:.2f} ms; batched server p50 - in-process "
              f"p50: {gap:.2f} ms (target <= 2 ms)")


if __name__ == "__main__":
    main()
