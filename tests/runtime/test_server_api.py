"""`graft serve` over a model repository, with a real HTTP client: endpoints and error classes."""

from __future__ import annotations

import asyncio
import base64
import json
import re
import shutil
import struct

import httpx
import numpy as np
import pytest

from models import LABELS, make_color_bundle
from server_harness import ServerProcess, image_bytes, png_header_only

H = W = 16


@pytest.fixture(scope="module")
def repo(tmp_path_factory, color_onnx):
    root = tmp_path_factory.mktemp("repo")
    make_color_bundle(root / "colors" / "1")
    make_color_bundle(root / "colors" / "2")
    (root / "plain" / "3").mkdir(parents=True)
    shutil.copy(color_onnx, root / "plain" / "3" / "model.onnx")
    return root


@pytest.fixture(scope="module")
def server(repo):
    proc = ServerProcess(repo, "--max-body-mb", "1", "--max-pixels", "1000000")
    yield proc
    assert proc.terminate() == 0
    proc.stop()


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.url, timeout=30) as c:
        yield c


def solid(color: str, n: int = 1) -> np.ndarray:
    rgb = {"red": (220, 20, 20), "green": (20, 220, 20), "blue": (20, 20, 220)}[color]
    return np.broadcast_to(np.array(rgb, np.uint8), (n, H, W, 3))


def tensor_request(pixels: np.ndarray, datatype: str = "FP32", **extra) -> dict:
    return {"inputs": [{"name": "pixels", "shape": list(pixels.shape), "datatype": datatype,
                        "data": pixels.reshape(-1).tolist()}], **extra}


def error_of(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and isinstance(body["error"], str)
    return body["error"]


# ----------------------------------------------------------------- health, metadata
def test_health_and_server_metadata(client):
    assert client.get("/v2/health/live").json() == {"live": True}
    assert client.get("/v2/health/ready").json() == {"ready": True}
    meta = client.get("/v2").json()
    assert meta["name"] == "graft" and "classification" in meta["extensions"]
    assert client.get("/v2/models").json() == {"models": [{"name": "colors", "versions": ["1", "2"]},
                                                          {"name": "plain", "versions": ["3"]}]}


@pytest.mark.parametrize("path", ["/v2/models/colors", "/v2/models/colors/versions/1"])
def test_model_metadata(client, path):
    meta = client.get(path).json()
    instances, batching = meta.pop("instances"), meta.pop("batching")
    assert meta == {"name": "colors", "versions": ["1", "2"], "platform": "onnxruntime_onnx",
                    "inputs": [{"name": "pixels", "datatype": "FP32", "shape": [-1, H, W, 3]}],
                    "outputs": [{"name": "probs", "datatype": "FP32", "shape": [-1, 3]}]}
    assert instances["live"] == instances["count"] >= 1 and instances["failed"] == []
    assert batching["decided_by"] == "measurement at start-up"
    assert batching["enabled"] == (batching["speedup"] >= batching["pays_from"])
    assert batching["max_batch_size"] == (32 if batching["enabled"] else 1)


def test_model_ready_and_config(client):
    assert client.get("/v2/models/plain/ready").json() == {"name": "plain", "ready": True}
    assert client.get("/v2/models/colors/versions/2/ready").status_code == 200
    config = client.get("/v2/models/colors/config").json()
    assert config["max_batch_size"] == 32 and config["input"][0]["dims"] == [H, W, 3]
    assert json.loads(config["parameters"]["labels"]["string_value"]) == LABELS


@pytest.mark.parametrize("path, message", [
    ("/v2/models/nope", "unknown model 'nope'; models: colors, plain"),
    ("/v2/models/colors/versions/9", "model 'colors' has no version '9'; versions: 1, 2"),
    ("/v2/models/colors/versions/9/ready", "no version '9'"),
    ("/v2/models/nope/config", "unknown model 'nope'"),
])
def test_unknown_model_or_version_is_404(client, path, message):
    assert message in error_of(client.get(path), 404)
    assert message.split(";")[0] in error_of(client.post(path.removesuffix("/ready").removesuffix("/config")
                                                        + "/infer", json={}), 404)


def test_unknown_route_and_method_answer_json_errors(client):
    assert "Not Found" in error_of(client.get("/v3/nothing"), 404)
    assert "Method Not Allowed" in error_of(client.get("/v2/models/colors/infer"), 405)


# ----------------------------------------------------------------------- inference
def test_infer_fp32_and_uint8_tensors(client):
    pixels = np.concatenate([solid("red"), solid("blue")])
    out = client.post("/v2/models/colors/infer", json=tensor_request(pixels.astype(np.float32), id="a1"))
    body = out.json()
    assert out.status_code == 200 and body["id"] == "a1" and body["model_version"] == "2"
    (output,) = body["outputs"]
    assert output["name"] == "probs" and output["datatype"] == "FP32" and output["shape"] == [2, 3]
    probs = np.array(output["data"]).reshape(2, 3)
    assert probs.argmax(1).tolist() == [0, 2] and np.allclose(probs.sum(1), 1, atol=1e-5)
    nested = {"inputs": [{"name": "pixels", "shape": [1, H, W, 3], "datatype": "UINT8",
                          "data": solid("green").tolist()}]}
    out = client.post("/v2/models/plain/versions/3/infer", json=nested).json()
    assert np.argmax(out["outputs"][0]["data"]) == 1 and out["model_name"] == "plain"


def test_infer_bytes_images_with_classification(client):
    images = [base64.b64encode(image_bytes(c, fmt=f)).decode() for c, f in [("blue", "JPEG"), ("red", "PNG")]]
    request = {"inputs": [{"name": "pixels", "shape": [2, 1], "datatype": "BYTES", "data": images}],
               "outputs": [{"name": "probs", "parameters": {"classification": 2}}]}
    out = client.post("/v2/models/colors/versions/1/infer", json=request).json()
    (output,) = out["outputs"]
    assert output["datatype"] == "BYTES" and output["shape"] == [2, 2]
    assert re.fullmatch(r"0\.9\d{5}:2:blue", output["data"][0])
    assert output["data"][2].endswith(":0:red") and output["data"][1].split(":")[2] in ("red", "green")


def test_infer_binary_tensor_extension(client):
    pixels = solid("green", 2).astype("<f4")
    header = json.dumps({"inputs": [{"name": "pixels", "shape": [2, H, W, 3], "datatype": "FP32",
                                     "parameters": {"binary_data_size": pixels.nbytes}}],
                         "outputs": [{"name": "probs", "parameters": {"binary_data": True}}]}).encode()
    out = client.post("/v2/models/colors/infer", content=header + pixels.tobytes(),
                      headers={"Inference-Header-Content-Length": str(len(header))})
    assert out.status_code == 200
    size = int(out.headers["inference-header-content-length"])
    meta = json.loads(out.content[:size])
    assert meta["outputs"][0]["parameters"] == {"binary_data_size": 2 * 3 * 4}
    probs = np.frombuffer(out.content[size:], "<f4").reshape(2, 3)
    assert probs.argmax(1).tolist() == [1, 1]


def test_infer_binary_bytes_input(client):
    data = image_bytes("red")
    payload = struct.pack("<I", len(data)) + data
    header = json.dumps({"inputs": [{"name": "pixels", "shape": [1], "datatype": "BYTES",
                                     "parameters": {"binary_data_size": len(payload)}}]}).encode()
    out = client.post("/v2/models/colors/infer", content=header + payload,
                      headers={"Inference-Header-Content-Length": str(len(header))})
    assert out.status_code == 200 and np.argmax(out.json()["outputs"][0]["data"]) == 0


def test_classify_raw_body_and_multipart(client):
    out = client.post("/v2/models/colors/classify?top_k=1", content=image_bytes("blue", fmt="JPEG"),
                      headers={"Content-Type": "image/jpeg"})
    body = out.json()
    assert out.status_code == 200 and body["model_name"] == "colors" and body["model_version"] == "2"
    (result,) = body["results"]
    assert result["filename"] is None and [p["label"] for p in result["predictions"]] == ["blue"]
    assert result["predictions"][0]["score"] > 0.9
    files = [("image", ("g.png", image_bytes("green"), "image/png")),
             ("image", ("r.bmp", image_bytes("red", fmt="BMP"), "image/bmp"))]
    body = client.post("/v2/models/plain/classify", files=files).json()
    assert [r["filename"] for r in body["results"]] == ["g.png", "r.bmp"]
    assert [r["predictions"][0]["label"] for r in body["results"]] == ["green", "red"]
    assert len(body["results"][0]["predictions"]) == 3  # top_k defaults to min(5, classes)


# ------------------------------------------------------------------ error classes
BAD_REQUESTS = [
    (b"{not json", "not valid JSON"),
    (b"[1, 2]", "must be a JSON object; received a list"),
    (b'{"inputs": 3}', "'inputs' must be a list with one input named 'pixels'; received a number"),
    (b'{"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": []}]}',
     "unknown input 'image' for model 'colors'; the model's input is 'pixels'"),
    (b'{"inputs": [{"name": "pixels", "shape": [1, 8, 8, 3], "datatype": "FP32", "data": []}]}',
     "shape [1, 8, 8, 3] does not match the model input [N, 16, 16, 3]"),
    (b'{"inputs": [{"name": "pixels", "shape": [1, 16, 16, 3], "datatype": "INT64", "data": []}]}',
     "datatype 'INT64' is not supported; allowed: FP32 or UINT8"),
    (b'{"inputs": [{"name": "pixels", "shape": [1, 16, 16, 3], "datatype": "FP32", "data": [1, 2]}]}',
     "'data' holds 2 values; the shape needs 768 numbers"),
    (b'{"inputs": [{"name": "pixels", "shape": [1, 16, 16, 3], "datatype": "FP32", "data": ["a"]}]}',
     "values of type 'U'"),
    (b'{"inputs": [{"name": "pixels", "shape": [1, 16, 16, 3], "datatype": "FP32", "data": [NaN]}]}',
     "NaN is not a valid JSON number"),
    (b'{"inputs": [{"name": "pixels", "shape": "x", "datatype": "FP32", "data": []}]}',
     "'shape' must be a list of non-negative integers; received 'x'"),
    (b'{"inputs": [{"name": "pixels", "shape": [1], "datatype": "BYTES", "data": ["!!"]}]}',
     "data[0] is not valid base64"),
    (b'{"inputs": [{"name": "pixels", "shape": [1], "datatype": "BYTES", "data": ["a", "b"]}],'
     b' "parameters": {"timeout": -1}}', "'parameters.timeout' must be an integer >= 0; received -1"),
    (b'{"inputs": [{"name": "pixels", "shape": [2], "datatype": "BYTES", "data": ["YQ==", "YQ=="]}],'
     b' "outputs": [{"name": "logits"}]}', "unknown output 'logits' for model 'colors'"),
    (b'{"inputs": [{"name": "pixels", "shape": [2], "datatype": "BYTES", "data": []}]}',
     "shape [2] needs 2 images; received 0"),
]


@pytest.mark.parametrize("body, message", BAD_REQUESTS)
def test_malformed_infer_requests_are_400(client, body, message):
    assert message in error_of(client.post("/v2/models/colors/infer", content=body), 400)


def test_values_out_of_range_are_400(client):
    pixels = solid("red").astype(np.float32) * 2
    assert "in 0..255" in error_of(client.post("/v2/models/colors/infer", json=tensor_request(pixels)), 400)
    assert "integers in 0..255" in error_of(
        client.post("/v2/models/colors/infer", json=tensor_request(pixels + 0.5, "UINT8")), 400)


def test_body_over_the_limit_is_413(client):
    message = error_of(client.post("/v2/models/colors/classify", content=b"\0" * (1024 * 1024 + 1)), 413)
    assert message == "request body of 1048577 bytes exceeds the limit of 1048576 bytes"


def test_streamed_body_over_the_limit_is_413(client):
    def chunks():  # no Content-Length: the limit is enforced while reading
        for _ in range(20):
            yield b"\0" * 65536

    message = error_of(client.post("/v2/models/colors/infer", content=chunks()), 413)
    assert message == "request body exceeds the limit of 1048576 bytes"


def test_decompression_bomb_is_refused_before_decoding(client):
    bomb = png_header_only(20_000, 5_000)  # 100 M pixels in 69 bytes; the server allows 1 M
    message = error_of(client.post("/v2/models/colors/classify", content=bomb), 413)
    assert "20000x5000 = 100000000 pixels exceeds the limit of 1000000" in message
    huge = png_header_only(100_000, 100_000)  # past Pillow's own bomb limit too
    assert "10000000000 pixels" in error_of(client.post("/v2/models/colors/classify", content=huge), 413)
    request = {"inputs": [{"name": "pixels", "shape": [2], "datatype": "BYTES",
                           "data": [base64.b64encode(x).decode() for x in (image_bytes("red"), bomb)]}]}
    assert error_of(client.post("/v2/models/colors/infer", json=request), 413).startswith("image 2 of 2: ")


def test_unsupported_and_corrupt_images(client):
    message = error_of(client.post("/v2/models/colors/classify", content=b"plain text, not a picture"), 415)
    assert "not a recognised image" in message
    truncated = image_bytes("red", size=(64, 64), fmt="JPEG")[:200]
    assert "cannot read image" in error_of(client.post("/v2/models/colors/classify", content=truncated), 400)
    short_data = png_header_only(64, 64)  # a valid header, too few pixels behind it
    assert "cannot decode image" in error_of(client.post("/v2/models/colors/classify", content=short_data), 400)
    assert "empty request body" in error_of(client.post("/v2/models/colors/classify", content=b""), 400)
    form = (b"--zz\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nb\r\n--zz--\r\n")
    response = client.post("/v2/models/colors/classify", content=form,
                           headers={"Content-Type": "multipart/form-data; boundary=zz"})
    assert "the multipart upload carries no file" in error_of(response, 400)


def test_bad_top_k_is_400(client):
    assert "top_k must be an integer from 1 to 1000; received 'x'" in error_of(
        client.post("/v2/models/colors/classify?top_k=x", content=image_bytes("red")), 400)


def test_request_past_its_deadline_is_504(client):
    request = tensor_request(solid("red").astype(np.float32), parameters={"timeout": 1})
    assert "passed its deadline" in error_of(client.post("/v2/models/colors/infer", json=request), 504)


def test_timeout_zero_sets_no_deadline_as_in_triton(client):
    request = tensor_request(solid("blue").astype(np.float32), parameters={"timeout": 0})
    out = client.post("/v2/models/colors/infer", json=request)
    assert out.status_code == 200, out.text
    assert np.argmax(out.json()["outputs"][0]["data"]) == 2


@pytest.mark.parametrize("datatype", ["FP32", "BYTES"])
def test_a_batch_over_max_batch_size_is_400(client, datatype):
    limit = client.get("/v2/models/colors/config").json()["max_batch_size"]
    n = limit + 1
    if datatype == "BYTES":
        request = {"inputs": [{"name": "pixels", "shape": [n], "datatype": "BYTES",
                               "data": [base64.b64encode(image_bytes("red")).decode()] * n}]}
    else:
        request = tensor_request(solid("red", n).astype(np.float32))
    message = error_of(client.post("/v2/models/colors/infer", json=request), 400)
    assert message == (f"input 'pixels': a batch of {n} exceeds the model's max_batch_size of {limit} "
                       f"(see /config); send at most {limit} per request")
    request["inputs"][0]["shape"][0] = limit
    if datatype == "BYTES":
        request["inputs"][0]["data"] = request["inputs"][0]["data"][:limit]
    else:
        request = tensor_request(solid("red", limit).astype(np.float32))
    out = client.post("/v2/models/colors/infer", json=request)
    assert out.status_code == 200 and out.json()["outputs"][0]["shape"] == [limit, 3]


# ------------------------------------------------------------- the model repository
def test_repository_index_lists_every_version_ready(client):
    ready = [{"name": "colors", "version": "1", "reason": "", "state": "READY"},
             {"name": "colors", "version": "2", "reason": "", "state": "READY"},
             {"name": "plain", "version": "3", "reason": "", "state": "READY"}]
    assert client.post("/v2/repository/index").json() == ready
    assert client.post("/v2/repository/index", json={"ready": True}).json() == ready
    assert "model_repository" in client.get("/v2").json()["extensions"]
    assert error_of(client.post("/v2/repository/index", json={"ready": 3}), 400) == \
        "'ready' must be true or false; received 3"
    assert "not valid JSON" in error_of(client.post("/v2/repository/index", content=b"{"), 400)
    assert "Method Not Allowed" in error_of(client.get("/v2/repository/index"), 405)


def test_repository_load_and_unload_are_refused_with_a_reason(client):
    message = error_of(client.post("/v2/repository/models/plain/load"), 400)
    assert message == ("explicit model load / unload is not allowed: graft serve loads every model under "
                       "MODEL_OR_REPOSITORY at startup; restart it to load 'plain'")
    assert "to unload 'colors'" in error_of(client.post("/v2/repository/models/colors/unload", json={}), 400)
    assert "unknown model 'nope'" in error_of(client.post("/v2/repository/models/nope/load"), 404)
    assert "Not Found" in error_of(client.post("/v2/repository/models/plain/reload"), 404)


# ------------------------------------------------------------- concurrency, metrics
def test_concurrent_requests_each_get_their_own_answer(client, server):
    """96 concurrent uploads: every answer is the right one (batching itself is asserted,
    deterministically, in test_server_batcher.py)."""
    colors = [LABELS[i % 3] for i in range(96)]
    before = _metrics(client)

    async def one(http, color):
        response = await http.post("/v2/models/plain/classify?top_k=1", content=image_bytes(color))
        return response.status_code, response.json()["results"][0]["predictions"][0]["label"]

    async def run():
        async with httpx.AsyncClient(base_url=server.url, timeout=30,
                                     limits=httpx.Limits(max_connections=32)) as http:
            return await asyncio.gather(*(one(http, c) for c in colors))

    assert asyncio.run(run()) == [(200, c) for c in colors]
    after = _metrics(client)
    key = '{model="plain",version="3"}'
    assert after["nv_inference_count_total" + key] - before.get("nv_inference_count_total" + key, 0) == 96
    successes = "nv_inference_request_success_total" + key
    assert after[successes] - before.get(successes, 0) == 96


def _metrics(client) -> dict[str, float]:
    text = client.get("/metrics").text
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
            for line in text.splitlines() if line and not line.startswith("#")}


def test_metrics_count_successes_failures_and_durations(client):
    client.post("/v2/models/colors/versions/1/classify", content=image_bytes("red"))
    client.post("/v2/models/colors/versions/1/classify", content=b"garbage")
    response = client.get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    metrics = _metrics(client)
    key = '{model="colors",version="1"}'
    assert metrics["nv_inference_request_success_total" + key] >= 1
    assert metrics['nv_inference_request_failure_total{model="colors",reason="REJECTED",version="1"}'] >= 1
    for name in ("nv_inference_count_total", "nv_inference_exec_count_total",
                 "nv_inference_request_duration_us_total", "nv_inference_queue_duration_us_total",
                 "nv_inference_compute_infer_duration_us_total"):
        assert metrics[name + key] > 0, name
    assert "nv_inference_pending_request_count" + key in metrics
    assert metrics["graft_http_requests_in_flight"] >= 1  # this very request


def test_openapi_document_describes_the_routes(client):
    doc = client.get("/openapi.json").json()
    assert doc["openapi"].startswith("3.")
    for path in ("/", "/v2/health/live", "/v2/health/ready", "/v2", "/v2/models/{name}/infer",
                 "/v2/models/{name}/versions/{version}/infer", "/v2/models/{name}/classify", "/metrics",
                 "/v2/repository/index", "/v2/repository/models/{name}/load"):
        assert path in doc["paths"], path
    assert list(doc["paths"]["/"]["get"]["responses"]["200"]["content"]) == ["text/html"]


def test_the_page_is_self_contained_html(client):
    response = client.get("/")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    policy = response.headers["content-security-policy"]
    assert "default-src 'none'" in policy and "connect-src 'self'" in policy
    html = response.text
    assert '<input id="file" type="file" accept="image/*">' in html and "classify?top_k=" in html
    assert not re.search(r"(src|href)=[\"'](https?:)?//", html)  # no external assets
