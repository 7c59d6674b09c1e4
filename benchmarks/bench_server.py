"""`graft serve` against a server built as a tuned KServe is: req/s, p50/p99, CPU and memory.

    python benchmarks/bench_server.py [--model BUNDLE] [--rounds 4] [--duration 8]
        [--variant NAME=ARGS ...]

Without --model it makes a bundle with `graft build` + `graft export`
(EfficientNet-Lite0, 224x224, ONNX float32; benchmarks/common.py; needs
graft[build]) once, under --workdir.

The peer ("tuned-peer") is written here: the architecture of a KServe tuned for
this machine, i.e. `uvicorn --workers 2` (one process per core), each process
with one onnxruntime session of one thread, decoding JPEGs with PIL's draft
mode, no access log, answering the same model's top label as JSON. KServe
itself is not run: its REST server binds 0.0.0.0 (hard-coded in KServe 0.21),
and this benchmark keeps every server on the loopback interface.
--variant runs further `graft serve` configurations in the same rounds (e.g.
one instance of two threads), to compare them.

The load is wrk (apt-get install -y wrk; closed loop: each of c connections sends the next request
when its answer arrives) posting one 640x480 JPEG to each server's
image-upload route, for c = 1, 8, 32. Each round starts every server afresh,
then runs every concurrency on every server, the servers' order rotating from
round to round, so drifting load on a shared machine hits them alike; the
figures are medians over rounds. Per run: req/s, p50 and p99 latency (wrk),
CPU milliseconds per request (user + system time of the server's processes,
from /proc) and the peak resident memory of the server's processes (summed,
sampled every 20 ms). Printed: the table, the ratios the targets are stated in,
and the ceiling: the CPU milliseconds the model call and the decode alone take
in one thread, and the req/s two cores could give if nothing else cost CPU.
The server's own CPU per request is its CPU per request less that model call
and decode: what its HTTP handling, queueing, threads and answers cost.
Written to benchmarks/results/bench_server.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

from common import bench_bundle, photo_jpegs, write_results  # noqa: E402
from server_peers import PEER_ENV  # noqa: E402

CONCURRENCY = (1, 8, 32)
TARGETS = {"rps_vs_peer_c8": 1.2, "rps_vs_peer_c32": 1.2, "p99_vs_peer_c32": 0.6, "rps_c1": 147.0,
           "peak_rss_c32_mib": 300.0, "rss_c32_over_c1": 1.5}
WRK_SCRIPT = """
local f = io.open(os.getenv("BENCH_BODY"), "rb")
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "image/jpeg"
done = function(summary, latency, requests)
  io.write(string.format('RESULT {"requests": %d, "seconds": %f, "errors": %d, "p50_us": %d, "p99_us": %d}\\n',
    summary.requests, summary.duration / 1e6, summary.errors.status + summary.errors.connect +
    summary.errors.read + summary.errors.write + summary.errors.timeout,
    latency:percentile(50), latency:percentile(99)))
end
"""


# ---------------------------------------------------------------- processes
def tree(pid: int) -> list[int]:
    """``pid`` and its descendants (uvicorn's workers are children of its supervisor)."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        for task in Path(f"/proc/{current}/task").glob("*"):
            try:
                todo += [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                pass
    return found


def cpu_seconds(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def rss_mib(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


class RssSampler:
    """The peak of the summed RSS of a process tree, sampled every 20 ms while running."""

    def __init__(self, pid: int):
        self.pid, self.peak, self._stop = pid, 0.0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        pids = tree(self.pid)
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_mib(pids))
            self._stop.wait(0.02)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


class Server:
    """A server process on a free loopback port; ``path`` is its image-upload route."""

    def __init__(self, label: str, command: list[str], path: str, env: dict | None = None):
        import socket

        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.label, self.path = label, path
        command = [part.replace("{port}", str(self.port)) for part in command]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                        text=True, env=dict(os.environ, **(env or {})))
        self._wait_ready(120)

    def _wait_ready(self, timeout: float) -> None:
        import http.client

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SystemExit(f"{self.label} exited: {self.process.stderr.read()[-2000:]}")
            try:
                connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                connection.request("GET", "/v2/health/ready")
                if connection.getresponse().status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        self.stop()
        raise SystemExit(f"{self.label} was not ready within {timeout} s")

    def stop(self) -> None:
        children = tree(self.process.pid)[1:]
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        for pid in children:  # uvicorn's workers, should the supervisor have left any
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass


def graft_server(label: str, model: Path, extra: list[str]) -> Server:
    import http.client

    command = [sys.executable, "-m", "graft", "serve", str(model), "--port", "{port}", "--log-level", "warning",
               *extra]
    server = Server(label, command, "", {"PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"})
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    connection.request("GET", "/v2/models")
    name = json.loads(connection.getresponse().read())["models"][0]["name"]
    server.path = f"/v2/models/{name}/classify?top_k=1"
    return server


def peer_server(onnx: Path, labels: list[str]) -> Server:
    command = [sys.executable, "-m", "uvicorn", "server_peers:peer_app", "--factory", "--app-dir", str(HERE),
               "--port", "{port}", "--workers", "2", "--no-access-log", "--log-level", "warning"]
    return Server("tuned-peer", command, "/classify",
                  {PEER_ENV: json.dumps({"model": str(onnx), "labels": labels})})


# ---------------------------------------------------------------- load
def wrk(server: Server, body: Path, script: Path, concurrency: int, seconds: float) -> dict:
    """One closed-loop run; its req/s, latency, CPU per request and peak memory."""
    command = ["wrk", "-t", str(min(2, concurrency)), "-c", str(concurrency), "-d", f"{max(1, round(seconds))}s",
               "--timeout", "10s", "-s", str(script), f"http://127.0.0.1:{server.port}{server.path}"]
    pids = tree(server.process.pid)
    cpu = cpu_seconds(pids)
    with RssSampler(server.process.pid) as rss:
        out = subprocess.run(command, capture_output=True, text=True, env=dict(os.environ, BENCH_BODY=str(body)),
                             timeout=seconds + 60)
    line = next((l for l in out.stdout.splitlines() if l.startswith("RESULT ")), None)
    if line is None:
        raise SystemExit(f"wrk failed: {out.stdout[-1000:]} {out.stderr[-1000:]}")
    result = json.loads(line[len("RESULT "):])
    if result["errors"]:
        print(f"  note: {server.label} c={concurrency}: {result['errors']} errors (non-2xx or socket)")
    requests = max(1, result["requests"])
    return {"rps": requests / result["seconds"], "p50_ms": result["p50_us"] / 1e3,
            "p99_ms": result["p99_us"] / 1e3, "errors": result["errors"],
            "cpu_ms": (cpu_seconds(tree(server.process.pid)) - cpu) * 1e3 / requests, "peak_rss_mib": rss.peak}


# ---------------------------------------------------------------- the ceiling
def ceiling(onnx: Path, body: bytes, calls: int = 60) -> dict:
    """CPU ms of one model call (one thread, no spinning) and of one draft-mode decode + resize."""
    import io

    import onnxruntime as ort
    from PIL import Image

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(onnx), options, providers=["CPUExecutionProvider"])
    model_input = session.get_inputs()[0]
    height, width = model_input.shape[1:3]

    def decode():
        image = Image.open(io.BytesIO(body))
        image.draft("RGB", (width, height))
        return np.asarray(image.convert("RGB").resize((width, height), Image.BILINEAR), np.float32)[None]

    pixels = decode()
    session.run(None, {model_input.name: pixels})

    def cpu_ms(work) -> float:
        times = []
        for _ in range(calls):
            start = time.process_time()
            work()
            times.append(time.process_time() - start)
        return statistics.median(times) * 1e3

    model_ms = cpu_ms(lambda: session.run(None, {model_input.name: pixels}))
    decode_ms = cpu_ms(decode)
    return {"model_cpu_ms": round(model_ms, 2), "decode_cpu_ms": round(decode_ms, 2),
            "two_core_rps_bound": round(2000 / (model_ms + decode_ms), 1)}


# ---------------------------------------------------------------- main
def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=None, help="A bundle (default: EfficientNet-Lite0, made by graft).")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "graft-bench-server")
    parser.add_argument("--rounds", type=int, default=4, help="Interleaved rounds; medians are quoted.")
    parser.add_argument("--duration", type=float, default=8.0, help="Seconds per run.")
    parser.add_argument("--concurrency", type=int, nargs="+", default=list(CONCURRENCY))
    parser.add_argument("--variant", action="append", default=[], metavar="NAME=ARGS",
                        help="Another graft serve configuration to run, e.g. 'one-instance=--instances 1'.")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    import shutil

    if shutil.which("wrk") is None:
        raise SystemExit("this benchmark drives the servers with wrk: apt-get install -y wrk")
    from graft.bundle import find_export, read_manifest

    model = (args.model or bench_bundle(args.workdir)).resolve()
    manifest = read_manifest(model)
    onnx = model / find_export(manifest, "onnx", "float32")["path"]
    body = Path(photo_jpegs(args.workdir / "jpegs", 1)[0])
    script = args.workdir / "post_jpeg.lua"
    script.write_text(WRK_SCRIPT)
    bound = ceiling(onnx, body.read_bytes())
    print(f"model {model.name}; body {body.stat().st_size} bytes (640x480 JPEG); ceiling {bound}")
    makers = {"graft": lambda: graft_server("graft", model, []),
              "tuned-peer": lambda: peer_server(onnx, manifest["labels"])}
    for variant in args.variant:
        name, _, extra = variant.partition("=")
        makers[name] = lambda extra=extra, name=name: graft_server(name, model, shlex.split(extra))
    runs: dict[tuple[str, int], list[dict]] = {}
    labels = list(makers)
    for round_index in range(args.rounds):
        order = labels[round_index % len(labels):] + labels[:round_index % len(labels)]
        servers = []
        try:
            for label in order:
                servers.append(makers[label]())
            for server in servers:
                wrk(server, body, script, 8, 2)  # warm up
            for concurrency in args.concurrency:
                for server in servers:
                    run = wrk(server, body, script, concurrency, args.duration)
                    runs.setdefault((server.label, concurrency), []).append(run)
                    print(f"round {round_index + 1} {server.label:12s} c={concurrency:<3d} {run['rps']:7.1f} req/s  "
                          f"p50 {run['p50_ms']:7.1f} ms  p99 {run['p99_ms']:7.1f} ms  cpu {run['cpu_ms']:5.2f} ms/req  "
                          f"rss {run['peak_rss_mib']:6.1f} MiB", flush=True)
        finally:
            for server in servers:
                server.stop()
    report(runs, labels, args, bound, body.stat().st_size)


def report(runs, labels, args, bound, body_bytes) -> None:
    medians = {key: {k: statistics.median(r[k] for r in rows) for k in rows[0]} for key, rows in runs.items()}
    work = bound["model_cpu_ms"] + bound["decode_cpu_ms"]  # what any server must spend per request
    for m in medians.values():
        m["own_cpu_ms"] = m["cpu_ms"] - work  # the server's own: HTTP, queueing, threads, answers
    print("\n| server | c | req/s | p50 ms | p99 ms | CPU ms/request | of which the server's own | peak RSS MiB |\n"
          "|---|---|---|---|---|---|---|---|")
    for label in labels:
        for c in args.concurrency:
            m = medians[(label, c)]
            print(f"| {label} | {c} | {m['rps']:.0f} | {m['p50_ms']:.1f} | {m['p99_ms']:.0f} | {m['cpu_ms']:.1f} | "
                  f"{m['own_cpu_ms']:.1f} | {m['peak_rss_mib']:.0f} |")
    ratios = {}
    g = lambda c, k: medians[("graft", c)][k]  # noqa: E731
    p = lambda c, k: medians[("tuned-peer", c)][k]  # noqa: E731
    for c in (8, 32):
        if c in args.concurrency:
            ratios[f"rps_vs_peer_c{c}"] = round(g(c, "rps") / p(c, "rps"), 3)
    if 32 in args.concurrency:
        ratios["p99_vs_peer_c32"] = round(g(32, "p99_ms") / p(32, "p99_ms"), 3)
        ratios["peak_rss_c32_mib"] = round(g(32, "peak_rss_mib"), 1)
    if 1 in args.concurrency:
        ratios["rps_c1"] = round(g(1, "rps"), 1)
        if 32 in args.concurrency:
            ratios["rss_c32_over_c1"] = round(g(32, "peak_rss_mib") / g(1, "peak_rss_mib"), 3)
    print(f"\nratios (graft / tuned-peer, medians of {args.rounds} rounds): {ratios}\ntargets: {TARGETS}")
    print(f"ceiling: model call {bound['model_cpu_ms']} ms + decode {bound['decode_cpu_ms']} ms of CPU per "
          f"request: at most {bound['two_core_rps_bound']} req/s on 2 cores if HTTP cost nothing")
    write_results("bench_server", {
        "setup": {"model": "efficientnet_lite0 bundle (ONNX float32, 224x224)", "body": f"640x480 JPEG, {body_bytes} bytes",
                  "load": "wrk closed loop", "rounds": args.rounds, "duration_s": args.duration,
                  "cores": os.cpu_count(), "servers": labels, "variants": args.variant},
        "ceiling": bound,
        "points": [{"server": label, "concurrency": c, "runs": len(runs[(label, c)]),
                    **{k: round(v, 2) for k, v in medians[(label, c)].items()}}
                   for label in labels for c in args.concurrency],
        "ratios": ratios, "targets": TARGETS})


if __name__ == "__main__":
    main()
