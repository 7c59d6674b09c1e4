"""Starting, refusing to start, the model repository layouts, and a SIGTERM that loses no request."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time

import httpx
import pytest

from graft.errors import BundleError
from graft.runtime.server.repository import load_repository
from models import make_color_bundle
from server_harness import REPO_ROOT, ServerProcess, image_bytes, metric, wait_for


def graft(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    return subprocess.run([sys.executable, "-m", "graft", *args], capture_output=True, text=True,
                          env=env, cwd=REPO_ROOT, timeout=60)


def test_sigterm_turns_ready_503_finishes_in_flight_requests_and_exits_0(color_bundle):
    server = ServerProcess(color_bundle)
    url = server.url + "/v2/models/colors/classify?top_k=1"
    colors = ["red", "green", "blue"] * 3
    answers: list[tuple[int, str] | Exception] = [None] * len(colors)  # type: ignore[list-item]

    def slow_upload(index: int, color: str):
        data = image_bytes(color)

        def chunks():
            step = len(data) // 10 + 1
            for i in range(0, len(data), step):  # about 2 s per upload
                time.sleep(0.2)
                yield data[i:i + step]

        try:
            response = httpx.post(url, content=chunks(), timeout=30)
            answers[index] = (response.status_code, response.json()["results"][0]["predictions"][0]["label"])
        except Exception as exc:  # recorded and asserted below
            answers[index] = exc

    threads = [threading.Thread(target=slow_upload, args=(i, c)) for i, c in enumerate(colors)]
    for thread in threads:
        thread.start()
    wait_for(lambda: metric(server.url, "graft_http_requests_in_flight") >= len(colors) + 1, 20,
             "the uploads reaching the server")  # the uploads and the metrics request itself
    server.process.send_signal(15)
    ready = []
    for _ in range(40):
        ready.append(httpx.get(server.url + "/v2/health/ready", timeout=5))
        if ready[-1].status_code == 503:
            break
        time.sleep(0.02)
    assert ready[-1].status_code == 503
    assert ready[-1].json() == {"error": "the server is shutting down"}
    for thread in threads:
        thread.join(30)
    assert answers == [(200, c) for c in colors]
    assert server.process.wait(30) == 0


def test_it_binds_loopback_by_default(color_onnx):
    server = ServerProcess(color_onnx)
    try:
        assert server.url.startswith("http://127.0.0.1:")
        assert httpx.get(server.url + "/v2/models/colors/versions/1/ready").status_code == 200
    finally:
        assert server.terminate() == 0


@pytest.mark.parametrize("setup, message", [
    ("missing", "no such model file, bundle or repository"),
    ("empty", "the model repository is empty"),
    ("no-versions", "a model folder needs version folders such as"),
])
def test_bad_model_paths_exit_2_with_one_line(tmp_path, setup, message):
    target = tmp_path / "repo"
    if setup != "missing":
        target.mkdir()
    if setup == "no-versions":
        (target / "colors").mkdir()
    result = graft("serve", str(target), "--port", "0")
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_port_in_use_exits_2(color_onnx):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        result = graft("serve", str(color_onnx), "--port", str(busy.getsockname()[1]))
    assert result.returncode == 2 and "cannot listen on 127.0.0.1:" in result.stderr


def test_repository_layouts(tmp_path, color_onnx, color_bundle):
    single = load_repository(color_onnx)
    assert [(e.name, e.version) for e in single.entries()] == [("colors", "1")]
    manifest = json.loads((color_bundle / "graft.json").read_text())
    assert [e.name for e in load_repository(color_bundle).entries()] == [manifest["name"]]
    root = tmp_path / "repo"
    make_color_bundle(root / "a" / "1")
    make_color_bundle(root / "a" / "10")
    (root / "b" / "2").mkdir(parents=True)
    shutil.copy(color_onnx, root / "b" / "2" / "m.onnx")
    repository = load_repository(root)
    assert repository.versions("a") == ["1", "10"] and repository.get("a").version == "10"
    assert repository.get("b", "2").input_name == "pixels"
    (root / "c" / "1").mkdir(parents=True)
    with pytest.raises(BundleError, match=r"expected a bundle \(graft.json\) or exactly one .onnx file; found 0"):
        load_repository(root)


def test_the_server_never_imports_tensorflow_and_the_cli_stays_light():
    code = ("import sys, graft.cli; light = not {'starlette', 'uvicorn', 'prometheus_client'} & set(sys.modules);"
            "import graft.runtime.server.app;"
            "heavy = {'tensorflow', 'keras', 'tf2onnx'} & set(sys.modules); print(light, sorted(heavy))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                            env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)))
    assert result.stdout.split() == ["True", "[]"], result.stderr


def test_the_listening_socket_says_tcp_so_responses_are_not_delayed_by_nagle():
    from graft.runtime.server import bind_socket

    sock = bind_socket("127.0.0.1", 0)
    try:
        assert sock.proto == socket.IPPROTO_TCP  # asyncio sets TCP_NODELAY only then
    finally:
        sock.close()
