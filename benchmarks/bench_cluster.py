"""`graft predict` on a 2-node Ray cluster vs the local engine, on the same two cores.

    python benchmarks/bench_cluster.py [--images 1000] [--small 16] [--repeats 3] [--workdir DIR]

Makes (once, cached in --workdir) 640x480 JPEGs cut from scikit-image's photographs
and a bundle made by `graft build` + `graft export` (EfficientNet-Lite0, 224x224, ONNX
float32; benchmarks/common.py). Starts a Ray cluster of two nodes of 1 CPU each with
`ray start` on 127.0.0.1 (tests/cluster/harness.py: a private network namespace), then
measures, interleaved over --repeats, the `graft predict` command end to end (a fresh
process each time, as an operator runs it) for:

- local: the local engine (decode threads and onnxruntime on both cores);
- cluster: ``--engine ray --address`` with default options (one actor of 1 CPU per node);

each on --images images and on --small images. The small job measures the fixed
startup cost (process start, model load, joining Ray, starting actors); the
difference between the two jobs gives the steady rate, images/s once running.
It also counts CPU time (the command, and for the cluster every process of the
cluster): CPU ms per image is what each peer costs, whatever else the machine
runs, so its ratio is the fair one on a busy machine.
Prints medians and the ratios (goal: cluster >= 85% of local) and writes
benchmarks/results/bench_cluster.json.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests" / "cluster"))

from common import bench_bundle, median, photo_jpegs, write_results  # noqa: E402
from harness import RayCluster, namespaces_work  # noqa: E402


def run_predict(cluster: RayCluster, model: Path, listing: Path, out: Path, engine: str) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one `graft predict` command (a fresh process). CPU counts
    the command and, on the cluster, every process of the cluster (actors, raylets, GCS...)."""
    extra = ["--engine", "ray", "--address", cluster.address] if engine == "cluster" else []
    out.unlink(missing_ok=True)
    Path(f"{out}.graft.json").unlink(missing_ok=True)
    before = children_cpu()
    with ClusterCpu(cluster) as in_cluster:
        started = time.perf_counter()
        done = cluster.graft("predict", str(model), str(listing), "-o", str(out), "--no-progress", *extra,
                             timeout=1800)
        seconds = time.perf_counter() - started
    # The command itself runs in the cluster's namespace: on the cluster, the sampled time has it.
    cpu = in_cluster.seconds if engine == "cluster" else children_cpu() - before
    if done.returncode != 0 or not re.search(r"\d+ ok, 0 failed", done.stderr):
        raise RuntimeError(f"{engine} predict failed ({done.returncode}): {done.stderr[-2000:]}")
    return seconds, cpu


class ClusterCpu:
    """CPU seconds the cluster's processes use during a block, sampled every ``every`` s: an
    actor that ends is counted up to its last sample (Ray reaps its workers itself, so
    their time never reaches a parent's children time)."""

    def __init__(self, cluster: RayCluster, every: float = 0.25):
        self.cluster, self.every = cluster, every
        self.first: dict = {}
        self.last: dict = {}
        self.seconds = 0.0
        self._stop = threading.Event()

    def _sample(self, baseline: bool = False) -> None:
        for key, ticks in self.cluster.ns.cpu_ticks().items():
            self.first.setdefault(key, ticks if baseline else 0)  # a process started since: all of it
            self.last[key] = ticks

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self._sample()

    def __enter__(self) -> "ClusterCpu":
        self._sample(baseline=True)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        time.sleep(self.every)
        self._stop.set()
        self._thread.join()
        self._sample()
        ticks = sum(self.last[key] - self.first[key] for key in self.last)
        self.seconds = ticks / os.sysconf("SC_CLK_TCK")


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--small", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "graft-bench-cluster")
    args = parser.parse_args()
    if namespaces_work():
        sys.exit(f"needs a private network namespace for a loopback Ray cluster: {namespaces_work()}")

    model = bench_bundle(args.workdir)
    paths = photo_jpegs(args.workdir / "images", args.images)
    lists = {}
    for name, count in (("large", args.images), ("small", args.small)):
        lists[name] = args.workdir / f"{name}.txt"
        lists[name].write_text("".join(f"{p}\n" for p in paths[:count]))
    print(f"{args.images} and {args.small} JPEGs 640x480, EfficientNet-Lite0 224x224 ONNX float32")

    started = time.perf_counter()
    with RayCluster((1, 1)) as cluster:
        cluster_start = time.perf_counter() - started
        print(f"cluster of 2 nodes x 1 CPU started in {cluster_start:.1f} s")
        runs = {(engine, size): [] for engine in ("local", "cluster") for size in ("large", "small")}
        cpu = {key: [] for key in runs}
        for repeat in range(args.repeats):
            for key, times in runs.items():
                wall, used = run_predict(cluster, model, lists[key[1]], args.workdir / f"out-{key[0]}.csv", key[0])
                times.append(wall)
                cpu[key].append(used)
                print(f"  repeat {repeat + 1}: {key[0]:7s} {key[1]}: {wall:.1f} s, {used:.1f} CPU s", flush=True)
    report(runs, cpu, args, cluster_start)


def report(runs: dict, cpu: dict, args, cluster_start: float) -> None:
    results = {"images": args.images, "small_images": args.small, "repeats": args.repeats,
               "cluster": "2 Ray nodes x 1 CPU (ray start, 127.0.0.1), default options",
               "cluster_start_seconds": round(cluster_start, 1), "peers": {}}
    extra = args.images - args.small
    for engine in ("local", "cluster"):
        large, small = median(runs[(engine, "large")]), median(runs[(engine, "small")])
        steady = [extra / (big - little) for big, little in zip(runs[(engine, "large")], runs[(engine, "small")])]
        results["peers"][engine] = {
            "end_to_end_images_per_second": round(args.images / large, 1),
            "steady_images_per_second": round(median(steady), 1),
            "startup_seconds": round(small, 2),
            "cpu_ms_per_image": round(1000 * median([(big - little) / extra for big, little
                                                      in zip(cpu[(engine, "large")], cpu[(engine, "small")])]), 2),
            "startup_cpu_seconds": round(median(cpu[(engine, "small")]), 2),
            "runs_large_seconds": [round(t, 2) for t in runs[(engine, "large")]],
            "runs_large_cpu_seconds": [round(t, 2) for t in cpu[(engine, "large")]],
            "runs_small_seconds": [round(t, 2) for t in runs[(engine, "small")]]}
    local, cluster = results["peers"]["local"], results["peers"]["cluster"]
    results["ratio_end_to_end"] = round(cluster["end_to_end_images_per_second"]
                                        / local["end_to_end_images_per_second"], 3)
    results["ratio_steady"] = round(cluster["steady_images_per_second"] / local["steady_images_per_second"], 3)
    results["startup_overhead_seconds"] = round(cluster["startup_seconds"] - local["startup_seconds"], 2)
    # On a busy machine wall time follows each peer's share of the cores, not its cost; CPU time
    # per image does not: on two idle cores, throughput is 2000 / (CPU ms per image).
    results["ratio_cpu_capacity"] = round(local["cpu_ms_per_image"] / cluster["cpu_ms_per_image"], 3)
    results["per_core_images_per_second"] = round(cluster["steady_images_per_second"] / 2, 1)
    print(f"\nmedians of {args.repeats} interleaved repeats:")
    for engine in ("local", "cluster"):
        peer = results["peers"][engine]
        print(f"  {engine:7s}: {peer['end_to_end_images_per_second']:6.1f} img/s end to end, "
              f"{peer['steady_images_per_second']:6.1f} img/s steady, startup {peer['startup_seconds']:.1f} s, "
              f"{peer['cpu_ms_per_image']:.2f} CPU ms/image")
    print(f"cluster / local: {results['ratio_end_to_end']:.1%} end to end, {results['ratio_steady']:.1%} "
          f"steady, {results['ratio_cpu_capacity']:.1%} by CPU per image (goal >= 85%); "
          f"startup overhead {results['startup_overhead_seconds']:+.1f} s; "
          f"per core {results['per_core_images_per_second']} img/s")
    write_results("bench_cluster", results)


if __name__ == "__main__":
    main()
