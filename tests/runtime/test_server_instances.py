"""Model instances and batching where it pays: parallel dispatch, a failing instance, the decision."""

from __future__ import annotations

import threading
import time

import httpx
import numpy as np
import pytest
from click.testing import CliRunner

from graft.cli.serve import serve
from graft.runtime.server import batch_probe, instances
from graft.runtime.server.placement import plan_instances
from server_harness import image_bytes, metric, thread_server, wait_for

CLASSIFY = "/v2/models/colors/classify?top_k=1"


def post_all(url: str, colors: list[str]) -> list[httpx.Response]:
    answers: list[httpx.Response | None] = [None] * len(colors)

    def post(index):
        answers[index] = httpx.post(url + CLASSIFY, content=image_bytes(colors[index]), timeout=30)

    threads = [threading.Thread(target=post, args=(i,)) for i in range(len(colors))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    return answers


def label(response: httpx.Response) -> str:
    return response.json()["results"][0]["predictions"][0]["label"]


# ------------------------------------------------------------------ dispatch
def test_two_slow_requests_run_in_parallel_on_two_instances(color_onnx):
    """Each model call waits at a two-party barrier: it passes only if both calls run at once."""
    with thread_server(color_onnx, instances=2, max_batch_size=1) as (server, internals):
        (entry,) = internals.repository.entries()
        barrier, ran_on = threading.Barrier(2, timeout=10), []
        for instance in entry.batcher.pool.instances:
            def slow(pixels, real=instance.run, index=instance.index):
                barrier.wait()  # a BrokenBarrierError (500) if the other call is not running too
                ran_on.append((index, threading.current_thread().name))
                return real(pixels)
            instance.run = slow
        answers = post_all(server.url, ["red", "blue"])
        assert [a.status_code for a in answers] == [200, 200]
        assert [label(a) for a in answers] == ["red", "blue"]
        assert sorted(index for index, _ in ran_on) == [0, 1]
        assert len({name for _, name in ran_on}) == 2  # each instance has its own thread
        meta = httpx.get(server.url + "/v2/models/colors").json()
        assert meta["instances"]["count"] == 2 and meta["instances"]["threads"] >= 1
        config = httpx.get(server.url + "/v2/models/colors/config").json()
        assert config["instance_group"] == [{"count": 2, "kind": "KIND_CPU"}]
        assert "dynamic_batching" not in config  # --max-batch-size 1: requests are never combined


def test_requests_wait_for_a_free_instance_in_arrival_order(color_onnx):
    with thread_server(color_onnx, instances=1, max_batch_size=1) as (server, internals):
        (entry,) = internals.repository.entries()
        (instance,) = entry.batcher.pool.instances
        gate, order, real = threading.Event(), [], instance.run

        def held(pixels):
            gate.wait(10)
            order.append(int(np.argmax(pixels[0, 0, 0])))  # which colour channel is brightest
            return real(pixels)

        instance.run = held
        answers: list[httpx.Response] = []
        threads = []
        for color in ["red", "green", "blue"]:  # each is queued before the next is sent
            threads.append(threading.Thread(target=lambda c=color: answers.append(
                httpx.post(server.url + CLASSIFY, content=image_bytes(c), timeout=30))))
            threads[-1].start()
            pending = len(threads) - 1
            key = 'nv_inference_pending_request_count{model="colors",version="1"}'
            wait_for(lambda: metric(server.url, key) == pending, 10, f"{pending} queued")
        gate.set()
        for thread in threads:
            thread.join(30)
        assert order == [0, 1, 2] and all(a.status_code == 200 for a in answers)


# ------------------------------------------------------------ a failing instance
def test_a_failing_instance_answers_503_turns_unready_and_is_replaced(color_onnx):
    with thread_server(color_onnx, instances=1, max_batch_size=1, timeout_ms=20_000) as (server, internals):
        (entry,) = internals.repository.entries()
        pool = entry.batcher.pool
        (instance,) = pool.instances

        def broken(pixels):
            raise RuntimeError("device lost")

        instance.run = broken
        reload_gate, real_load = threading.Event(), pool._load

        def held_load(index):
            reload_gate.wait(10)
            return real_load(index)

        pool._load = held_load
        started = time.monotonic()
        failed = httpx.post(server.url + CLASSIFY, content=image_bytes("red"), timeout=30)
        assert failed.status_code == 503 and time.monotonic() - started < 10  # at once, not a 504
        assert failed.json()["error"] == ("model 'colors:1': instance 0 failed while running this request "
                                          "(RuntimeError: device lost); it is being replaced, retry")
        ready = httpx.get(server.url + "/v2/health/ready")
        assert ready.status_code == 503
        assert ready.json()["error"] == ("model 'colors:1' is not ready: no instance is running (instance 0: "
                                         "RuntimeError: device lost); being replaced; retry shortly")
        assert httpx.get(server.url + "/v2/models/colors/ready").status_code == 503
        replacing = 'graft_model_instances{model="colors",state="replacing",version="1"}'
        assert metric(server.url, replacing) == 1
        reload_gate.set()
        wait_for(lambda: httpx.get(server.url + "/v2/health/ready").status_code == 200, 10, "readiness 200")
        assert pool.instances[0] is not instance and pool.live == 1
        again = httpx.post(server.url + CLASSIFY, content=image_bytes("green"), timeout=30)
        assert again.status_code == 200 and label(again) == "green"
        assert metric(server.url, replacing) == 0
        failures = 'nv_inference_request_failure_total{model="colors",reason="UNAVAILABLE",version="1"}'
        assert metric(server.url, failures) == 1


def test_an_instance_that_cannot_be_replaced_marks_the_model_failed(color_onnx, monkeypatch):
    monkeypatch.setattr(instances, "REPLACE_TRIES", 1)
    with thread_server(color_onnx, instances=1, max_batch_size=1, timeout_ms=20_000) as (server, internals):
        (entry,) = internals.repository.entries()
        pool = entry.batcher.pool

        def broken(pixels):
            raise RuntimeError("device lost")

        def no_load(index):
            raise OSError("out of device memory")

        pool.instances[0].run, pool._load = broken, no_load
        assert httpx.post(server.url + CLASSIFY, content=image_bytes("red"), timeout=30).status_code == 503
        wait_for(lambda: entry.batcher.failure is not None, 10, "the model to be marked failed")
        reason = "every instance failed (instance 0: reloading failed: OSError: out of device memory)"
        assert httpx.get(server.url + "/v2/health/ready").json() == {
            "error": f"model 'colors:1' is not ready: {reason}; restart the server"}
        started = time.monotonic()
        later = httpx.post(server.url + CLASSIFY, content=image_bytes("blue"), timeout=30)
        assert later.status_code == 503 and reason in later.json()["error"]
        assert time.monotonic() - started < 10


# ------------------------------------------------------------ the batching decision
def per_call(pixels):  # a fixed cost per call, whatever the batch: batching pays
    time.sleep(0.004)
    return np.zeros((len(pixels), 3), np.float32)


def per_image(pixels):  # the cost grows with the batch: batching buys nothing
    time.sleep(0.002 * len(pixels))
    return np.zeros((len(pixels), 3), np.float32)


def test_batching_is_decided_by_measurement():
    sample = np.zeros((1, 4, 4, 3), np.uint8)
    pays = batch_probe.decide(per_call, sample, 32)
    assert pays["enabled"] is True and pays["max_batch_size"] == 32 and pays["speedup"] >= 4
    assert set(pays["ms_per_image"]) == {"batch_1", "batch_8"}
    does_not = batch_probe.decide(per_image, sample, 32)
    assert does_not["enabled"] is False and does_not["max_batch_size"] == 1
    assert does_not["speedup"] < batch_probe.PAYS
    assert batch_probe.summary("m:1", does_not).startswith(
        "model m:1: batching off, decided by measurement at start-up: per image batch 1 ")
    fixed = batch_probe.decide(per_call, sample, 32, fixed_batch=1)
    assert fixed == {"enabled": False, "max_batch_size": 1, "decided_by": "the model takes a fixed batch of 1"}


@pytest.mark.parametrize("size, enabled", [(None, None), (1, False), (4, True)])
def test_the_decision_is_served_and_max_batch_size_overrides_it(color_onnx, size, enabled):
    with thread_server(color_onnx, instances=1, max_batch_size=size) as (server, internals):
        batching = httpx.get(server.url + "/v2/models/colors").json()["batching"]
        (entry,) = internals.repository.entries()
        if size is None:
            assert batching["decided_by"] == "measurement at start-up" and batching["rounds"] >= 1
        else:
            assert batching == {"enabled": enabled, "max_batch_size": size, "decided_by": "--max-batch-size"}
        assert entry.batcher.max_batch_size == batching["max_batch_size"]


# ------------------------------------------------------------------ the plan
def test_instance_plans_fill_the_cores_and_warn_when_oversubscribed():
    auto = plan_instances(None, None, "cpu", cores=4)
    assert (auto.count, auto.threads, auto.warning) == (4, 1, None)
    shape = lambda plan: (plan.count, plan.threads)  # noqa: E731
    assert shape(plan_instances(None, 2, "cpu", cores=4)) == (2, 2)
    assert shape(plan_instances(1, None, "cpu", cores=4)) == (1, 4)
    assert shape(plan_instances(None, None, "cuda", cores=4)) == (1, None)
    over = plan_instances(3, None, "cpu", cores=2)
    assert over.count == 3 and over.warning.startswith(
        "3 instance(s) x 1 thread(s) oversubscribe the 2 core(s) this process may use")
    assert plan_instances(None, None, "cpu", cores=4, pin=True).cores == ((0,), (1,), (2,), (3,))
    assert plan_instances(2, 2, "cpu", cores=4, pin=True).cores == ((0, 1), (2, 3))
    assert plan_instances(3, None, "cpu", cores=2, pin=True).cores is None  # they could not go round
    assert plan_instances(None, None, "cpu", cores=4).cores is None


def test_pinned_instances_run_on_their_own_cores(color_onnx):
    """Each instance's thread keeps to the core the plan gave it, and /v2/models/NAME says which."""
    from graft.runtime.server.placement import core_ids

    count = min(2, len(core_ids()))
    with thread_server(color_onnx, instances=count, max_batch_size=1, pin_cores=True) as (server, internals):
        (entry,) = internals.repository.entries()
        meta = httpx.get(server.url + "/v2/models/colors").json()
        assert meta["instances"]["cores"] == [[core] for core in core_ids()[:count]]
        assert "pinned to cores" in meta["instances"]["plan"]
        for instance in entry.batcher.pool.instances:
            seen = instance.executor.submit(lambda: sorted(__import__("os").sched_getaffinity(0))).result(10)
            assert seen == list(instance.cores)
        answers = post_all(server.url, ["red", "blue"])
        assert [label(a) for a in answers] == ["red", "blue"]


@pytest.mark.parametrize("value", ["0", "many", "257"])
def test_bad_instances_values_are_refused(value):
    result = CliRunner().invoke(serve, ["model.onnx", "--instances", value])
    assert result.exit_code == 2
    assert "expected 'auto' or a whole number from 1 to 256" in result.output


def test_a_slow_upload_holds_up_no_other_request(color_onnx):
    """A request joins the queue only once its body is in: one instance still serves others."""
    import socket

    from server_harness import raw_request

    with thread_server(color_onnx, instances=1, max_batch_size=1) as (server, _):
        body = image_bytes("red")
        request = raw_request("POST", "/v2/models/colors/classify", body)
        with socket.create_connection(("127.0.0.1", server.port)) as slow:
            slow.sendall(request[:-len(body) // 2])  # headers and half of the body, then nothing
            answers = post_all(server.url, ["green", "blue"])
            assert [(a.status_code, label(a)) for a in answers] == [(200, "green"), (200, "blue")]
            slow.sendall(request[-len(body) // 2:])
            slow.settimeout(10)
            answer = b""
            while b'"results"' not in answer:
                answer += slow.recv(65536)
        assert answer.startswith(b"HTTP/1.1 200 ")


def test_more_threads_than_cores_start_with_a_warning(color_onnx):
    from graft.runtime.server.placement import usable_cores

    from server_harness import ServerProcess

    count = usable_cores() + 1
    server = ServerProcess(color_onnx, "--instances", str(count), "--model-threads", "1",
                           "--lone-request-threads", str(count))
    try:
        meta = httpx.get(server.url + "/v2/models/colors", timeout=10).json()
        assert meta["instances"]["count"] == count
        assert meta["instances"]["lone_request"]["threads"] == count
    finally:
        server.terminate()
    log = server.process.stderr.read()
    assert (f"model colors:1: {count} instance(s) x 1 thread(s) oversubscribe the {count - 1} core(s) "
            "this process may use") in log
    assert (f"model colors:1: --lone-request-threads {count} is more than the {count - 1} core(s) this "
            "process may use") in log


# ------------------------------------------------------------ a request alone
def test_a_request_alone_runs_on_the_lone_engine_and_requests_together_on_the_instances(monkeypatch):
    import asyncio

    from graft.runtime.server import instances as instances_module
    from graft.runtime.server.batcher import Batcher
    from graft.runtime.server.instances import Instance, InstancePool

    monkeypatch.setattr(instances_module, "ALONE_AFTER_S", 0.3)
    ran_on = []

    def engine(name):
        def run(pixels):
            ran_on.append(name)
            time.sleep(0.02)
            return pixels.reshape(len(pixels), -1).sum(axis=1, keepdims=True)
        return run

    async def main():
        pool = InstancePool([Instance(0, engine(0), "m"), Instance(1, engine(1), "m")], name="m:1",
                            lone=Instance(2, engine("lone"), "m", threads=2))
        batcher = Batcher(max_batch_size=1, name="m:1", pool=pool)
        batcher.start()
        pixels = np.ones((1, 1, 1, 1), np.float32)
        await batcher.submit(pixels)                                    # alone
        await asyncio.gather(batcher.submit(pixels), batcher.submit(pixels))   # two at once
        await batcher.submit(pixels)                                    # alone, but right after two
        await asyncio.sleep(0.4)
        await batcher.submit(pixels)                                    # alone for a while again
        await batcher.stop()
        return pool.describe()["lone_request"]

    described = asyncio.run(main())
    assert ran_on[0] == "lone" and sorted(ran_on[1:3]) == [0, 1]
    assert ran_on[3] in (0, 1) and ran_on[4] == "lone"
    assert described == {"threads": 2, "state": "live", "runs": 2, "error": None}


def test_the_lone_engine_is_served_in_the_model_metadata(color_onnx):
    with thread_server(color_onnx, instances=2, max_batch_size=1, lone_request_threads=2) as (server, _):
        answer = httpx.post(server.url + CLASSIFY, content=image_bytes("red"), timeout=30)
        assert label(answer) == "red"
        described = httpx.get(server.url + "/v2/models/colors").json()["instances"]
        assert described["count"] == 2
        assert described["lone_request"] == {"threads": 2, "state": "live", "runs": 1, "error": None}


def test_no_instance_starts_while_the_lone_engine_runs(color_onnx):
    with thread_server(color_onnx, instances=2, max_batch_size=1, lone_request_threads=2) as (server, internals):
        (entry,) = internals.repository.entries()
        pool, events, gate = entry.batcher.pool, [], threading.Event()
        real_lone = pool.lone.run

        def held(pixels):
            events.append("lone starts")
            gate.wait(10)
            events.append("lone ends")
            return real_lone(pixels)

        pool.lone.run = held
        for instance in pool.instances:
            instance.run = lambda pixels, real=instance.run: (events.append("instance runs"), real(pixels))[1]
        first = threading.Thread(target=lambda: httpx.post(server.url + CLASSIFY, content=image_bytes("red"),
                                                           timeout=30))
        first.start()
        wait_for(lambda: events == ["lone starts"], 10, "the lone engine to take the first request")
        second = threading.Thread(target=lambda: httpx.post(server.url + CLASSIFY, content=image_bytes("blue"),
                                                            timeout=30))
        second.start()
        key = 'nv_inference_pending_request_count{model="colors",version="1"}'
        wait_for(lambda: metric(server.url, key) == 1, 10, "the second request to queue")
        time.sleep(0.2)
        assert events == ["lone starts"]  # the second waits: the lone engine holds every core
        gate.set()
        first.join(30)
        second.join(30)
        assert events == ["lone starts", "lone ends", "instance runs"]


def test_a_failing_lone_engine_answers_503_and_requests_alone_go_to_the_instances(color_onnx):
    with thread_server(color_onnx, instances=1, max_batch_size=1, lone_request_threads=2) as (server, internals):
        (entry,) = internals.repository.entries()

        def broken(pixels):
            raise RuntimeError("out of threads")

        entry.batcher.pool.lone.run = broken
        failed = httpx.post(server.url + CLASSIFY, content=image_bytes("red"), timeout=30)
        assert failed.status_code == 503
        assert ("the engine for requests alone failed while running this request (RuntimeError: out of "
                "threads); they run on the instances now, retry") in failed.json()["error"]
        after = httpx.post(server.url + CLASSIFY, content=image_bytes("red"), timeout=30)
        assert after.status_code == 200 and label(after) == "red"
        assert httpx.get(server.url + "/v2/health/ready").status_code == 200
        described = httpx.get(server.url + "/v2/models/colors").json()["instances"]["lone_request"]
        assert described["state"] == "failed" and "out of threads" in described["error"]


def test_lone_request_threads_with_worker_processes_is_refused():
    result = CliRunner().invoke(serve, ["model.onnx", "--instance-kind", "process", "--lone-request-threads", "2"])
    assert result.exit_code == 2
    assert "--lone-request-threads works with instances in threads" in result.output


def _lone_pool(runs: dict):
    from graft.runtime.server.instances import Instance, InstancePool

    return InstancePool([Instance(0, runs[0], "m"), Instance(1, runs[1], "m")], name="m:1",
                        lone=Instance(2, runs["lone"], "m", threads=2))


def test_a_request_right_after_two_long_ones_is_not_alone(monkeypatch):
    """'Alone' counts from when two requests stopped being held together, not from when they met."""
    import asyncio

    from graft.runtime.server import instances as instances_module
    from graft.runtime.server.batcher import Batcher

    monkeypatch.setattr(instances_module, "ALONE_AFTER_S", 0.2)
    ran_on = []

    def engine(name, seconds):
        def run(pixels):
            time.sleep(seconds)
            ran_on.append(name)
            return pixels.reshape(len(pixels), -1).sum(axis=1, keepdims=True)
        return run

    async def main():
        pool = _lone_pool({0: engine(0, 0.4), 1: engine(1, 0.4), "lone": engine("lone", 0)})
        batcher = Batcher(max_batch_size=1, name="m:1", pool=pool)
        batcher.start()
        pixels = np.ones((1, 1, 1, 1), np.float32)
        await asyncio.gather(batcher.submit(pixels), batcher.submit(pixels))  # held together for 0.4 s
        await batcher.submit(pixels)
        await batcher.stop()

    asyncio.run(main())
    assert sorted(ran_on[:2]) == [0, 1] and ran_on[2] in (0, 1)


def test_a_stuck_lone_call_does_not_stall_the_model(monkeypatch):
    import asyncio

    from graft.runtime.server import instances as instances_module
    from graft.runtime.server.batcher import Batcher

    monkeypatch.setattr(instances_module, "LONE_EXCLUSIVE_S", 0.2)
    gate = threading.Event()

    def stuck(pixels):
        gate.wait(10)
        return pixels.reshape(len(pixels), -1).sum(axis=1, keepdims=True)

    def working(pixels):
        return pixels.reshape(len(pixels), -1).sum(axis=1, keepdims=True) + 1

    async def main():
        pool = _lone_pool({0: working, 1: working, "lone": stuck})
        batcher = Batcher(max_batch_size=1, name="m:1", pool=pool)
        batcher.start()
        pixels = np.ones((1, 1, 1, 1), np.float32)
        first = asyncio.create_task(batcher.submit(pixels))   # alone: the lone engine, which hangs
        await asyncio.sleep(0.05)
        started = time.monotonic()
        second = await asyncio.wait_for(batcher.submit(pixels), 5)
        waited = time.monotonic() - started
        gate.set()
        await first
        await batcher.stop()
        return second[0].item(), waited

    answer, waited = asyncio.run(main())
    assert answer == 2.0  # answered by an instance while the lone call was still stuck
    assert 0.1 < waited < 2.0
