"""Limits per request and per process: pixels, deadlines between decodes, connections, slow bodies,
a dead batch worker, and the settings that reach the engine."""

from __future__ import annotations

import base64
import json
import socket
import time

import httpx
import pytest

from graft.runtime.server import ServerConfig, load_repository
from server_harness import image_bytes, metric, raw_request, thread_server, wait_for

CLASSIFY = "/v2/models/colors/classify"


def bytes_request(images: list[bytes], **parameters) -> dict:
    return {"inputs": [{"name": "pixels", "shape": [len(images)], "datatype": "BYTES",
                        "data": [base64.b64encode(x).decode() for x in images]}], "parameters": parameters}


def counting_preprocess(entry, delay_s: float = 0.0) -> list[int]:
    """Wrap the model's decoder: count the images it decodes (optionally slowly)."""
    calls, real = [], entry.classifier.preprocess

    def preprocess(images):
        calls.append(len(images))
        time.sleep(delay_s)
        return real(images)

    entry.classifier.preprocess = preprocess
    return calls


@pytest.mark.parametrize("threads", [1, 3])
def test_model_threads_reach_the_engine(color_onnx, threads):
    (entry,) = load_repository(color_onnx, ServerConfig(model_threads=threads)).entries()
    assert entry.classifier.engine.session.get_session_options().intra_op_num_threads == threads


def test_the_request_pixel_budget_is_413_before_any_decoding(color_onnx):
    with thread_server(color_onnx, max_request_pixels=10_000) as (server, internals):
        (entry,) = internals.repository.entries()
        calls = counting_preprocess(entry)
        three = [image_bytes(c, size=(60, 60)) for c in ("red", "green", "blue")]  # 3 x 3600 pixels
        files = [("image", (f"{i}.png", data, "image/png")) for i, data in enumerate(three)]
        refused = httpx.post(server.url + CLASSIFY, files=files, timeout=30)
        assert refused.status_code == 413
        assert refused.json()["error"] == ("the request's 3 image(s) (60x60, 60x60, 60x60) hold 10800 pixels, "
                                           "over the per-request limit of 10000; send fewer or smaller images, "
                                           "or raise --max-request-pixels")
        infer = httpx.post(server.url + "/v2/models/colors/infer", json=bytes_request(three), timeout=30)
        assert infer.status_code == 413 and "hold 10800 pixels" in infer.json()["error"]
        assert calls == []  # refused from the headers: nothing was decoded
        two = httpx.post(server.url + CLASSIFY + "?top_k=1", files=files[:2], timeout=30)
        assert two.status_code == 200
        assert [r["predictions"][0]["label"] for r in two.json()["results"]] == ["red", "green"]
        assert len(calls) == 2


def test_the_deadline_stops_decoding_between_images(color_onnx):
    with thread_server(color_onnx, timeout_ms=30_000) as (server, internals):
        (entry,) = internals.repository.entries()
        calls = counting_preprocess(entry, delay_s=0.05)
        request = bytes_request([image_bytes("red")] * 20, timeout=150_000)  # 150 ms, in microseconds
        response = httpx.post(server.url + "/v2/models/colors/infer", json=request, timeout=30)
    assert response.status_code == 504
    assert "the request passed its deadline while decoding its images" in response.json()["error"]
    assert 1 <= len(calls) < 10, calls  # stopped early: 20 images at 50 ms each take 1 s


def test_connections_beyond_the_limit_get_503(color_onnx):
    with thread_server(color_onnx, limit_concurrency=3) as (server, _):
        connections = server.server.server_state.connections  # uvicorn's set of open connections
        idle = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(2)]
        try:
            wait_for(lambda: len(connections) == 2, 5, "two idle connections accepted")
            assert httpx.get(server.url + "/v2/health/live").status_code == 200  # the third connection
            idle.append(socket.create_connection(("127.0.0.1", server.port)))
            wait_for(lambda: len(connections) == 3, 5, "three idle connections accepted")
            refused = httpx.get(server.url + "/v2/health/live")  # a fourth
            assert refused.status_code == 503 and refused.text == "Service Unavailable"
        finally:
            for sock in idle:
                sock.close()
        wait_for(lambda: httpx.get(server.url + "/v2/health/live").status_code == 200, 5,
                 "a request after the idle connections closed being served")


def test_a_body_trickled_slower_than_the_timeout_gets_408(color_onnx):
    with thread_server(color_onnx, body_timeout_s=0.5) as (server, internals):
        head = raw_request("POST", CLASSIFY, headers={"Content-Type": "image/png"})
        head = head.replace(b"Content-Length: 0", b"Content-Length: 1000")
        with socket.create_connection(("127.0.0.1", server.port)) as sock:
            sock.settimeout(0.1)
            sock.sendall(head + b"\x89PNG")
            started, answer = time.monotonic(), b""
            while time.monotonic() - started < 5 and b"\r\n\r\n" not in answer:
                try:
                    sock.sendall(b"\0")  # one byte every 0.1 s: 1000 bytes would take 100 s
                    answer += sock.recv(65536)
                except socket.timeout:
                    continue
                except OSError:
                    break
            elapsed = time.monotonic() - started
            sock.settimeout(5)
            while b'"}' not in answer:
                more = sock.recv(65536)
                if not more:
                    break
                answer += more
        assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
        assert b"connection: close" in answer.lower()
        assert b"the request body did not arrive within 0.5 s" in answer
        assert 0.4 < elapsed < 4.0  # cut off after 0.5 s, not after the 100 s the trickle needs
        key = '{model="colors",reason="REJECTED",version="1"}'
        assert metric(server.url, "nv_inference_request_failure_total" + key) == 1
        assert httpx.post(server.url + CLASSIFY, content=image_bytes("red"), timeout=30).status_code == 200


def test_a_dead_batch_worker_turns_the_server_unready_and_answers_503_at_once(color_onnx):
    with thread_server(color_onnx, timeout_ms=20_000) as (server, internals):
        (entry,) = internals.repository.entries()

        def broken_observer(stats):
            raise RuntimeError("observer bug")

        entry.batcher.on_batch = broken_observer  # raises inside the collector, after the batch ran
        first = httpx.post(server.url + CLASSIFY, content=image_bytes("red"), timeout=30)
        assert first.status_code == 200
        wait_for(lambda: httpx.get(server.url + "/v2/health/ready").status_code == 503, 5, "readiness 503")
        reason = "the batch worker stopped (RuntimeError: observer bug)"
        assert httpx.get(server.url + "/v2/health/ready").json() == {
            "error": f"model 'colors:1' is not ready: {reason}; restart the server"}
        model = httpx.get(server.url + "/v2/models/colors/ready")
        assert model.status_code == 503 and reason in model.json()["error"]
        started = time.monotonic()
        second = httpx.post(server.url + CLASSIFY, content=image_bytes("blue"), timeout=30)
        assert second.status_code == 503 and reason in second.json()["error"]
        assert time.monotonic() - started < 2  # not a 504 after the 20 s timeout
        index = httpx.post(server.url + "/v2/repository/index").json()
        assert index == [{"name": "colors", "version": "1", "reason": reason, "state": "UNAVAILABLE"}]
        assert httpx.post(server.url + "/v2/repository/index", json={"ready": True}).json() == []
        assert metric(server.url, 'nv_inference_request_failure_total{model="colors",reason="UNAVAILABLE",'
                                  'version="1"}') == 1


def test_a_client_that_leaves_mid_decoding_stops_the_decoding(color_onnx):
    with thread_server(color_onnx) as (server, internals):
        (entry,) = internals.repository.entries()
        calls = counting_preprocess(entry, delay_s=0.05)
        body = json.dumps(bytes_request([image_bytes("red")] * 20)).encode()
        with socket.create_connection(("127.0.0.1", server.port)) as leaving:
            leaving.sendall(raw_request("POST", "/v2/models/colors/infer", body,
                                        {"Content-Type": "application/json"}))
            wait_for(lambda: len(calls) >= 1, 10, "decoding to begin")
        canceled = 'nv_inference_request_failure_total{model="colors",reason="CANCELED",version="1"}'
        wait_for(lambda: metric(server.url, canceled) == 1, 10, "one CANCELED failure")
        assert len(calls) < 10, calls  # 20 images at 50 ms each: it stopped soon after the client left
        assert metric(server.url, 'nv_inference_count_total{model="colors",version="1"}') == 0
