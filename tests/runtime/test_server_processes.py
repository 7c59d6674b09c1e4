"""Instances in worker processes (--instance-kind process): dispatch, a killed one, shutdown."""

from __future__ import annotations

import os
import signal
import threading

import httpx
import pytest

from server_harness import ServerProcess, image_bytes, thread_server, wait_for

CLASSIFY = "/v2/models/colors/classify?top_k=1"


def instances(url: str) -> dict:
    return httpx.get(url + "/v2/models/colors", timeout=10).json()["instances"]


def label(response: httpx.Response) -> str:
    return response.json()["results"][0]["predictions"][0]["label"]


def post_later(url: str, color: str, answers: list) -> threading.Thread:
    thread = threading.Thread(target=lambda: answers.append(
        httpx.post(url + CLASSIFY, content=image_bytes(color), timeout=30)))
    thread.start()
    return thread


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ", 1)[1][0] != "Z"   # a zombie has ended
    except FileNotFoundError:
        return False


@pytest.fixture()
def process_server(color_onnx):
    with thread_server(color_onnx, instances=2, max_batch_size=1, instance_kind="process",
                       pin_cores=True, timeout_ms=20_000) as (server, internals):
        yield server, internals


def test_a_stopped_instance_process_holds_up_only_its_own_request(process_server):
    server, _ = process_server
    described = instances(server.url)
    assert described["kind"] == "process" and described["count"] == 2 and described["live"] == 2
    first, second = described["pids"]
    assert first != second and first != os.getpid() and alive(first) and alive(second)
    from graft.runtime.server.placement import core_ids

    if len(core_ids()) >= 2:  # two instances go round two cores: each process keeps to its own
        assert described["cores"] == [[core] for core in core_ids()[:2]]
        assert [sorted(os.sched_getaffinity(pid)) for pid in (first, second)] == described["cores"]
    os.kill(first, signal.SIGSTOP)   # instance 0 takes the next request and cannot finish it
    try:
        held: list[httpx.Response] = []
        thread = post_later(server.url, "red", held)
        wait_for(lambda: instances(server.url)["busy"] == 1, 10, "instance 0 to take the request")
        other = httpx.post(server.url + CLASSIFY, content=image_bytes("blue"), timeout=10)
        assert other.status_code == 200 and label(other) == "blue" and not held
    finally:
        os.kill(first, signal.SIGCONT)
    thread.join(30)
    assert [(a.status_code, label(a)) for a in held] == [(200, "red")]


def test_a_killed_instance_process_answers_503_and_is_replaced(process_server):
    server, internals = process_server
    first = instances(server.url)["pids"][0]
    os.kill(first, signal.SIGSTOP)
    held: list[httpx.Response] = []
    thread = post_later(server.url, "red", held)
    wait_for(lambda: instances(server.url)["busy"] == 1, 10, "instance 0 to take the request")
    os.kill(first, signal.SIGKILL)
    thread.join(30)
    (answer,) = held
    assert answer.status_code == 503
    assert answer.json()["error"] == (
        f"model 'colors:1': instance 0 failed while running this request (InstanceLost: its process "
        f"(pid {first}) was killed by SIGKILL while it ran a batch); it is being replaced, retry")
    wait_for(lambda: instances(server.url)["live"] == 2, 60, "instance 0 to be replaced")
    replaced = instances(server.url)["pids"][0]
    assert replaced != first and alive(replaced) and not alive(first)
    answers = [httpx.post(server.url + CLASSIFY, content=image_bytes(c), timeout=30) for c in ("green", "red")]
    assert [(a.status_code, label(a)) for a in answers] == [(200, "green"), (200, "red")]
    assert httpx.get(server.url + "/v2/health/ready").status_code == 200


def test_a_bad_image_is_the_request_s_fault_and_the_process_stays(process_server):
    server, _ = process_server
    pids = instances(server.url)["pids"]
    png = image_bytes("red")
    bad = httpx.post(server.url + CLASSIFY, content=png[:60], timeout=10)  # the header, cut short
    assert bad.status_code in (400, 415) and "cannot" in bad.json()["error"]
    assert instances(server.url)["pids"] == pids
    good = httpx.post(server.url + CLASSIFY, content=png, timeout=10)
    assert good.status_code == 200 and label(good) == "red"


def test_the_instance_processes_end_with_the_server(color_onnx):
    server = ServerProcess(color_onnx, "--instances", "2", "--instance-kind", "process")
    try:
        pids = instances(server.url)["pids"]
        assert all(alive(pid) for pid in pids)
        assert server.terminate() == 0
        wait_for(lambda: not any(alive(pid) for pid in pids), 15, "the instance processes to end")
    finally:
        server.stop()
