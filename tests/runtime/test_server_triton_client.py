"""A stock Open Inference Protocol client (tritonclient's HTTP client) against `graft serve`."""

from __future__ import annotations

import numpy as np
import pytest

from server_harness import ServerProcess, image_bytes

httpclient = pytest.importorskip("tritonclient.http")
from tritonclient.utils import InferenceServerException  # noqa: E402


@pytest.fixture(scope="module")
def triton(color_bundle):
    proc = ServerProcess(color_bundle)
    client = httpclient.InferenceServerClient(proc.url.removeprefix("http://"))
    yield client
    client.close()
    assert proc.terminate() == 0


def test_health_and_metadata(triton):
    assert triton.is_server_live() and triton.is_server_ready()
    assert triton.is_model_ready("colors") and triton.is_model_ready("colors", "1")
    assert triton.get_server_metadata()["name"] == "graft"
    meta = triton.get_model_metadata("colors")
    assert meta["inputs"] == [{"name": "pixels", "datatype": "FP32", "shape": [-1, 16, 16, 3]}]
    assert triton.get_model_config("colors")["max_batch_size"] == 32


@pytest.mark.parametrize("binary", [True, False])
def test_infer_fp32_tensor(triton, binary):
    pixels = np.zeros((3, 16, 16, 3), np.float32)
    for i in range(3):
        pixels[i, ..., i] = 220.0
    inputs = [httpclient.InferInput("pixels", list(pixels.shape), "FP32")]
    inputs[0].set_data_from_numpy(pixels, binary_data=binary)
    outputs = [httpclient.InferRequestedOutput("probs", binary_data=binary)]
    result = triton.infer("colors", inputs, outputs=outputs, request_id="r7")
    probs = result.as_numpy("probs")
    assert probs.shape == (3, 3) and probs.argmax(1).tolist() == [0, 1, 2]
    assert result.get_response()["id"] == "r7"


def test_infer_images_with_classification(triton):
    images = np.array([image_bytes("green", fmt="JPEG"), image_bytes("blue")], dtype=np.object_)
    inputs = [httpclient.InferInput("pixels", [2], "BYTES")]
    inputs[0].set_data_from_numpy(images)
    outputs = [httpclient.InferRequestedOutput("probs", class_count=1)]
    labels = triton.infer("colors", inputs, model_version="1", outputs=outputs).as_numpy("probs")
    assert labels.shape == (2, 1)
    assert [x.decode().split(":")[1:] for x in labels[:, 0]] == [["1", "green"], ["2", "blue"]]


def test_errors_reach_the_client(triton):
    inputs = [httpclient.InferInput("pixels", [1, 8, 8, 3], "FP32")]
    inputs[0].set_data_from_numpy(np.zeros((1, 8, 8, 3), np.float32))
    with pytest.raises(InferenceServerException, match=r"shape \[1, 8, 8, 3\] does not match"):
        triton.infer("colors", inputs)
    with pytest.raises(InferenceServerException, match="unknown model 'other'"):
        triton.get_model_metadata("other")


def test_model_repository_index_and_control(triton):
    assert "model_repository" in triton.get_server_metadata()["extensions"]
    assert triton.get_model_repository_index() == [
        {"name": "colors", "version": "1", "state": "READY", "reason": ""}]
    with pytest.raises(InferenceServerException, match="explicit model load / unload is not allowed"):
        triton.load_model("colors")
    with pytest.raises(InferenceServerException, match="restart it to unload 'colors'"):
        triton.unload_model("colors")
    assert triton.is_model_ready("colors")  # refusing to unload left it serving


def test_the_clients_timeout_is_in_microseconds(triton):
    pixels = np.full((1, 16, 16, 3), 20.0, np.float32)
    pixels[..., 1] = 220.0
    inputs = [httpclient.InferInput("pixels", [1, 16, 16, 3], "FP32")]
    inputs[0].set_data_from_numpy(pixels)
    assert triton.infer("colors", inputs, timeout=10_000_000).as_numpy("probs").argmax() == 1  # 10 s
    with pytest.raises(InferenceServerException, match="passed its deadline"):
        triton.infer("colors", inputs, timeout=1)  # 1 us
