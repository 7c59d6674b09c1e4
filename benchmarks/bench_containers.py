"""graft's images: their sizes, and the serving container's cold start to its first 200.

    python benchmarks/bench_containers.py [--model BUNDLE] [--repeats 5]

Needs the images (docker/build.sh runtime builder) and docker or podman. Without
--model it makes a bundle with `graft build` + `graft export` (EfficientNet-Lite0,
224x224, ONNX float32; benchmarks/common.py; needs graft[build]) once, under --workdir.

Cold start: from the `run` command to the first 200 of /v2/health/ready, and to
the first 200 of a classify request (a photo), for the runtime image on the host
network. The peer, in the same run and interleaved with it, is the same
`graft serve` started as a process on the host (the same code, from this
checkout). Prints medians and the ratio. Sizes are the engine's own figures
(uncompressed, as `images` shows them).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT / "tests" / "containers"))

import container_engine as ce  # noqa: E402
from common import bench_bundle, median, write_results  # noqa: E402


def image_mb(name: str) -> float:
    size = ce.command("image", "inspect", "--format", "{{.Size}}", name).stdout.strip()
    return round(int(size) / 1e6, 1)


def first_200s(start: list[str], url: str, model: str, photo: bytes, stop, limit_s: float = 120) -> tuple:
    """Seconds from launching `start` to the first 200 of ready, then of a classify request."""
    began = time.perf_counter()
    handle = subprocess.Popen(start, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ce.engine_env())
    try:
        ready = poll(lambda: httpx.get(f"{url}/v2/health/ready", timeout=2), began, limit_s)
        classify = poll(lambda: httpx.post(f"{url}/v2/models/{model}/classify", content=photo, timeout=30,
                                           headers={"Content-Type": "image/png"}), began, limit_s)
        return ready, classify
    finally:
        stop(handle)


def poll(request, began: float, limit_s: float) -> float:
    while time.perf_counter() - began < limit_s:
        try:
            if request().status_code == 200:
                return time.perf_counter() - began
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"no 200 within {limit_s:.0f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="a bundle (default: build one under --workdir)")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "graft-bench")
    parser.add_argument("--photo", type=Path, help="the image to classify (default: a tile of the bundle's data)")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    ce.require_engine()
    bundle = (args.model or bench_bundle(args.workdir)).resolve()
    model = __import__("json").loads((bundle / "graft.json").read_text())["name"]
    photo = (args.photo or next((args.workdir / "surfaces" / "grass").glob("*.png"))).read_bytes()

    sizes = {name: image_mb(ce.image(name)) for name in ("runtime", "builder")}
    if ce.command("image", "exists", ce.MADE_BASE, check=False).returncode == 0:
        sizes[ce.MADE_BASE] = image_mb(ce.MADE_BASE)  # the base docker/build.sh makes from Debian
    print(f"image sizes (MB): {sizes}")

    port = ce.free_port()
    url, name = f"http://127.0.0.1:{port}", f"graft-bench-{port}"
    container = [ce.require_engine(), "run", "--rm", "--name", name, "--network", "host", "--no-healthcheck",
                 f"--volume={bundle}:/model:ro", ce.image("runtime"), "serve", "/model", "--port", str(port)]
    host = [sys.executable, "-m", "graft", "serve", str(bundle), "--port", str(port)]

    def stop_container(handle):
        ce.command("stop", "--time", "10", name, check=False, timeout=70)
        handle.wait(30)

    def stop_process(handle):
        handle.terminate()
        handle.wait(30)

    runs = {"container": [], "host process": []}
    for i in range(args.repeats):  # interleaved, so load on the machine hits both alike
        runs["container"].append(first_200s(container, url, model, photo, stop_container))
        runs["host process"].append(first_200s(host, url, model, photo, stop_process))
        print(f"run {i + 1}/{args.repeats}: container {runs['container'][-1][0]:.2f} s to ready, "
              f"host {runs['host process'][-1][0]:.2f} s")
    medians = {who: {"ready_s": round(median([r[0] for r in rs]), 2),
                     "first_classify_s": round(median([r[1] for r in rs]), 2)} for who, rs in runs.items()}
    ratio = medians["container"]["first_classify_s"] / medians["host process"]["first_classify_s"]
    print(f"cold start, medians of {args.repeats}: {medians}; container / host process = {ratio:.2f}")
    write_results("bench_containers", {
        "engine": ce.require_engine(), "image_mb": sizes,
        "cold_start": {"repeats": args.repeats, "medians": medians,
                       "container_over_host_first_classify": round(ratio, 2),
                       "runs": {who: [[round(a, 3), round(b, 3)] for a, b in rs] for who, rs in runs.items()}},
        "model": {"bundle": bundle.name, "name": model}})


if __name__ == "__main__":
    main()
