"""graft's images, built with docker or podman and run as a user would: the builder builds and
exports a bundle from a folder of real photos, the runtime image serves it to a stock client.

Skipped where no container engine exists (CI installs podman, and fails instead)."""

from __future__ import annotations

import json
import socket

import numpy as np
import pytest

import container_engine as ce

PER_CLASS = 16  # 64x64 tiles of each photo: enough for a frozen ImageNet backbone, quick to build


@pytest.fixture(scope="module", autouse=True)
def images():
    ce.require_engine()
    ce.build("runtime", "builder")


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """Class folders of disjoint tiles of scikit-image's photographs, as graft demo makes them."""
    skimage_data = pytest.importorskip("skimage.data")
    from PIL import Image

    from graft.demo import SURFACES, TILE

    root = tmp_path_factory.mktemp("photos")
    for name in SURFACES[:3]:
        photo, folder = getattr(skimage_data, name)(), root / name
        folder.mkdir()
        corners = [(t, l) for t in range(0, photo.shape[0] - TILE + 1, TILE)
                   for l in range(0, photo.shape[1] - TILE + 1, TILE)][:PER_CLASS]
        for top, left in corners:
            Image.fromarray(photo[top:top + TILE, left:left + TILE]).save(folder / f"{top}_{left}.png")
    root.chmod(0o755)  # the image's user (not root) reads it through the volume
    return root


@pytest.fixture(scope="module")
def bundle(photos, tmp_path_factory):
    """Built and exported inside the builder image: ONNX float32 and TFLite int8."""
    out = tmp_path_factory.mktemp("out")
    out.chmod(0o777)  # the image's user writes here
    volumes = {photos: "/data:ro", out: "/out"}
    steps = [("build", "/data", "-o", "/out/bundle", "--image-size", "96", "--epochs", "20"),
             ("export", "/out/bundle", "--format", "onnx"),
             ("export", "/out/bundle", "--format", "tflite", "--precision", "int8")]
    for step in steps:
        done = ce.run("builder", *step, volumes=volumes)
        assert done.returncode == 0, f"graft {' '.join(step)}: {done.stdout[-1500:]}{done.stderr[-1500:]}"
    return out / "bundle"


def test_builder_builds_and_exports_a_bundle_of_photos(bundle):
    manifest = json.loads((bundle / "graft.json").read_text())
    assert manifest["labels"] == ["brick", "grass", "gravel"]
    rows = {(row["format"], row["precision"]): row for row in manifest["exports"]}
    assert set(rows) == {("onnx", "float32"), ("tflite", "int8")}
    for row in rows.values():
        assert (bundle / row["path"]).stat().st_size == row["size_bytes"]
        assert row["parity"]["images"] > 0


def held_out(bundle) -> list[dict]:
    splits = json.loads((bundle / "splits.json").read_text())["samples"]
    return [row for row in splits if row["split"] == "test"]


def test_runtime_image_serves_the_bundle_to_a_stock_client(bundle, photos):
    httpclient = pytest.importorskip("tritonclient.http")
    model = json.loads((bundle / "graft.json").read_text())["name"]
    server = ce.Server(bundle, ce.free_port())
    try:
        client = httpclient.InferenceServerClient(server.url.removeprefix("http://"))
        assert client.is_server_ready() and client.is_model_ready(model)
        metadata = client.get_model_metadata(model)
        tests = held_out(bundle)
        files = [photos / row["path"] for row in tests]
        data = np.array([f.read_bytes() for f in files], dtype=np.object_)
        inputs = [httpclient.InferInput(metadata["inputs"][0]["name"], [len(files)], "BYTES")]
        inputs[0].set_data_from_numpy(data)
        output = metadata["outputs"][0]["name"]
        labels = client.infer(model, inputs, outputs=[
            httpclient.InferRequestedOutput(output, class_count=1)]).as_numpy(output)
        served = [value.decode().split(":")[2] for value in labels[:, 0]]
        # the ONNX file served in the container answers as the Keras model did in the builder ...
        assert served == [row["predicted"] for row in tests]
        # ... and names the photos' classes (held-out tiles; at most one of them wrong)
        wrong = [(s, row["label"]) for s, row in zip(served, tests) if s != row["label"]]
        assert len(wrong) <= 1, f"{len(wrong)} of {len(tests)} wrong: {wrong}"
        client.close()
        health = ce.command("healthcheck", "run", server.name, check=False)
        assert health.returncode == 0, health.stdout + health.stderr
        assert server.stop(grace_s=10) == 0  # SIGTERM ended it within 10 s (a SIGKILL reads 137)
    finally:
        server.remove()


def test_runtime_image_predicts_with_litert(bundle, photos):
    row = max(held_out(bundle), key=lambda r: r["score"])  # the surest tile: int8 may flip a close one
    done = ce.run("runtime", "predict", "/model", f"/photos/{row['path']}", "--artifact", "tflite:int8",
                  "--top-k", "1", volumes={bundle: "/model:ro", photos: "/photos:ro"})
    assert done.returncode == 0, done.stderr[-2000:]
    # "PATH<TAB>LABEL SCORE": the path holds the class name too, so read the column
    line = next(line for line in done.stdout.splitlines() if line.startswith("/photos/"))
    assert line.split("\t")[1].split()[0] == row["predicted"]


def test_runtime_image_has_no_tensorflow_and_runs_as_a_user():
    done = ce.run("runtime", "-c", "import importlib.util as u, os; "
                  "print(u.find_spec('tensorflow') is None, u.find_spec('keras') is None, os.getuid())",
                  extra=("--entrypoint", "python3"))
    assert done.stdout.split() == ["True", "True", "10001"], done.stderr


@pytest.mark.parametrize("name", ["runtime", "builder"])
def test_images_carry_labels(name):
    document = json.loads(ce.command("image", "inspect", ce.image(name)).stdout)[0]
    config = document["Config"]
    labels = config["Labels"]
    assert labels["org.opencontainers.image.version"] == ce.VERSION
    assert labels["org.opencontainers.image.licenses"] == "Apache-2.0"
    assert config["User"] == "graft"
    if name == "runtime":
        healthcheck = config.get("Healthcheck") or document["Healthcheck"]  # docker's place, podman's
        assert "graft-healthcheck" in " ".join(healthcheck["Test"])


def test_a_missing_bundle_exits_2_with_one_line():
    done = ce.run("runtime")  # no volume at /model
    assert done.returncode == 2
    assert ce.engine_lines(done.stderr) == [
        "error: /model: no such model file, bundle or repository"]


def test_a_corrupt_bundle_exits_2_with_one_line(tmp_path):
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "graft.json").write_text("{ not json")
    corrupt.chmod(0o755)
    done = ce.run("runtime", volumes={corrupt: "/model:ro"})
    assert done.returncode == 2
    lines = ce.engine_lines(done.stderr)
    assert len(lines) == 1 and lines[0].startswith("error: /model/graft.json: the manifest is not valid JSON")


def test_a_bundle_the_user_cannot_read_is_one_line(bundle, tmp_path):
    private = tmp_path / "private"
    private.mkdir(mode=0o700)  # owned by the test's user, closed to the image's
    (private / "graft.json").write_text((bundle / "graft.json").read_text())
    done = ce.run("runtime", volumes={private: "/model:ro"})
    # a bundle the caller cannot read is bad input: exit 2, one line that says what to do
    assert (done.returncode, ce.engine_lines(done.stderr)) == (2, [
        "error: /model/graft.json: cannot be read (permission denied); make the bundle readable by the "
        "user graft runs as (uid 10001)"])


def test_a_taken_port_is_one_line(bundle):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = ce.run("runtime", "serve", "/model", "--port", str(port), volumes={bundle: "/model:ro"})
    assert done.returncode == 2
    assert ce.engine_lines(done.stderr) == [
        f"error: cannot listen on 127.0.0.1:{port} (Address already in use); pick another --port or --host"]
