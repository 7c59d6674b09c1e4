"""The dynamic batcher, with a compute function the test can hold: batching, queue limit, deadlines."""

from __future__ import annotations

import asyncio
import socket
import threading
import time

import httpx
import numpy as np
import pytest

from graft.runtime.server.batcher import Batcher
from graft.runtime.server.errors import DeadlineExceeded, Unavailable
from graft.runtime.server.instances import Instance, InstancePool

from server_harness import image_bytes, metric, raw_request, thread_server, wait_for


class Gate:
    """A real row-wise computation (sum of pixels) that waits while the gate is closed."""

    def __init__(self):
        self.open = threading.Event()
        self.started = threading.Event()
        self.batches: list[int] = []

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        self.started.set()
        self.open.wait(10)
        self.batches.append(len(pixels))
        return pixels.reshape(len(pixels), -1).sum(axis=1, keepdims=True).astype(np.float32)


def rows(*values: int) -> np.ndarray:
    return np.array(values, np.float32).reshape(-1, 1, 1, 1)


def run(coro):
    return asyncio.run(coro)


async def started(batcher: Batcher, gate: Gate, first: np.ndarray) -> asyncio.Task:
    """Start the batcher and one request that occupies the (held) worker."""
    batcher.start()
    task = asyncio.create_task(batcher.submit(first))
    while not gate.started.is_set():
        await asyncio.sleep(0.005)
    return task


def test_requests_queued_during_a_batch_run_together_and_get_their_own_rows():
    async def main():
        gate = Gate()
        batcher = Batcher(gate, max_batch_size=8, max_queue_delay_s=0.001)
        first = await started(batcher, gate, rows(1))
        rest = [asyncio.create_task(batcher.submit(rows(10 * i, 10 * i + 1))) for i in range(1, 4)]
        await asyncio.sleep(0.05)
        gate.open.set()
        results = await asyncio.gather(first, *rest)
        await batcher.stop()
        return gate.batches, [r[0].ravel().tolist() for r in results]

    batches, results = run(main())
    assert batches == [1, 6]
    assert results == [[1.0], [10.0, 11.0], [20.0, 21.0], [30.0, 31.0]]


def test_batches_never_exceed_the_max_batch_size():
    async def main():
        gate = Gate()
        batcher = Batcher(gate, max_batch_size=2, max_queue_delay_s=0)
        first = await started(batcher, gate, rows(0))
        rest = [asyncio.create_task(batcher.submit(rows(i))) for i in range(1, 6)]
        await asyncio.sleep(0.05)
        gate.open.set()
        await asyncio.gather(first, *rest)
        await batcher.stop()
        return gate.batches

    assert run(main()) == [1, 2, 2, 1]


def test_a_full_queue_answers_503():
    async def main():
        gate = Gate()
        batcher = Batcher(gate, max_batch_size=4, max_queue=2, name="m:1")
        first = await started(batcher, gate, rows(1))
        queued = [asyncio.create_task(batcher.submit(rows(2))) for _ in range(2)]
        await asyncio.sleep(0.02)
        with pytest.raises(Unavailable, match=r"model 'm:1': the queue is full \(2 requests waiting\)"):
            await batcher.submit(rows(3))
        gate.open.set()
        await asyncio.gather(first, *queued)
        await batcher.stop()

    run(main())


def test_a_request_past_its_deadline_gets_504_and_is_not_computed():
    async def main():
        gate = Gate()
        batcher = Batcher(gate, max_batch_size=4)
        first = await started(batcher, gate, rows(1))
        with pytest.raises(DeadlineExceeded) as info:
            await batcher.submit(rows(2), deadline=time.monotonic() + 0.05)
        assert info.value.status == 504
        keep = asyncio.create_task(batcher.submit(rows(3)))
        await asyncio.sleep(0.02)
        gate.open.set()
        await asyncio.gather(first, keep)
        await batcher.stop()
        return gate.batches

    assert run(main()) == [1, 1]


def test_a_lone_request_is_not_held_for_the_queue_delay():
    async def main():
        gate = Gate()
        gate.open.set()
        batcher = Batcher(gate, max_queue_delay_s=30)
        batcher.start()
        result = await asyncio.wait_for(batcher.submit(rows(5)), 10)
        await batcher.stop()
        return result[0].item()

    assert run(main()) == 5.0


def test_a_lone_request_waits_in_the_busy_instance_thread_and_the_rest_in_the_queue():
    async def main():
        gate = Gate()
        batcher = Batcher(gate, max_batch_size=1)  # batching off: requests run alone
        first = await started(batcher, gate, rows(1))
        rest = [asyncio.create_task(batcher.submit(rows(value))) for value in (2, 3)]
        await asyncio.sleep(0.05)
        (instance,) = batcher.pool.instances
        seen = (instance.handed, len(batcher._items), batcher.queued)
        gate.open.set()
        results = await asyncio.gather(first, *rest)
        await batcher.stop()
        return seen, [r[0].item() for r in results]

    # the second is handed to the instance's thread (it starts the moment the first ends);
    # the third waits in the queue; both count as pending
    assert run(main()) == ((2, 1, 2), [1.0, 2.0, 3.0])


def test_a_request_handed_to_an_instance_that_breaks_gets_503_too():
    calls, loads = [], []

    def broken(pixels):
        calls.append(len(pixels))
        time.sleep(0.05)
        raise RuntimeError("device lost")

    def working(pixels):
        return pixels.reshape(len(pixels), -1).sum(axis=1, keepdims=True)

    def load(index):
        loads.append(index)
        return Instance(index, working, "m")

    async def main():
        pool = InstancePool([Instance(0, broken, "m")], load=load)
        batcher = Batcher(max_batch_size=1, name="m:1", pool=pool)
        batcher.start()
        results = await asyncio.gather(*(batcher.submit(rows(v)) for v in (1, 2)), return_exceptions=True)
        while pool.live == 0:  # the replacement loads in the background
            await asyncio.sleep(0.01)
        after = await batcher.submit(rows(7))
        await asyncio.sleep(0.1)  # a second replacement, had one been started, would load now
        await batcher.stop()
        return results, after[0].item()

    results, after = run(main())
    assert [type(r) for r in results] == [Unavailable, Unavailable]
    assert all("instance 0 failed while running this request (RuntimeError: device lost)" in str(r)
               for r in results)
    assert calls == [1, 1] and loads == [0] and after == 7.0  # replaced once; the new one answers


def test_a_forming_batch_waits_for_requests_still_arriving():
    async def main():
        gate = Gate()
        gate.open.set()
        batcher = Batcher(gate, max_batch_size=8, max_queue_delay_s=5)
        batcher.start()

        async def late_arrival():
            with batcher.arriving():
                await asyncio.sleep(0.1)  # still reading its body
            return await batcher.submit(rows(2))

        second = asyncio.create_task(late_arrival())
        await asyncio.sleep(0.01)
        first = await batcher.submit(rows(1))
        await second
        await batcher.stop()
        return gate.batches, first[0].item()

    assert run(main()) == ([2], 1.0)


def test_stop_answers_503_to_requests_taken_into_a_running_batch():
    async def main():
        gate = Gate()
        batcher = Batcher(gate, max_batch_size=4, name="m:1")
        first = await started(batcher, gate, rows(1))  # taken off the queue, running, held
        queued = asyncio.create_task(batcher.submit(rows(2)))
        await asyncio.sleep(0.02)
        stopping = asyncio.create_task(batcher.stop())
        outcomes = await asyncio.wait_for(asyncio.gather(first, queued, return_exceptions=True), 5)
        gate.open.set()  # the running batch finishes in its thread; stop() waits for it off the loop
        await asyncio.wait_for(stopping, 10)
        return outcomes

    outcomes = run(main())
    assert [type(o) for o in outcomes] == [Unavailable, Unavailable]
    assert all(str(o) == "model 'm:1': the server is shutting down" for o in outcomes)


def test_a_cancelled_request_leaves_the_queue_and_is_not_computed():
    async def main():
        gate = Gate()
        batcher = Batcher(gate, max_batch_size=8)
        first = await started(batcher, gate, rows(1))
        leaving = asyncio.create_task(batcher.submit(rows(2)))
        staying = asyncio.create_task(batcher.submit(rows(3)))
        await asyncio.sleep(0.02)
        assert batcher.queued == 2
        leaving.cancel()
        await asyncio.sleep(0)
        queued_after_cancel = batcher.queued
        gate.open.set()
        results = await asyncio.gather(first, staying)
        await batcher.stop()
        return queued_after_cancel, gate.batches, [r[0].item() for r in results]

    assert run(main()) == (1, [1, 1], [1.0, 3.0])


def test_a_dead_collector_answers_what_it_held_and_everything_after_with_503():
    async def main():
        gate = Gate()
        batcher = Batcher(gate, max_batch_size=8, name="m:1")
        first = await started(batcher, gate, rows(1))
        queued = asyncio.create_task(batcher.submit(rows(2)))
        await asyncio.sleep(0.02)

        def broken(stats):
            raise ValueError("boom")

        batcher.on_batch = broken  # raised in the collector after the running batch
        gate.open.set()
        held = await asyncio.wait_for(asyncio.gather(first, queued, return_exceptions=True), 5)
        with pytest.raises(Unavailable) as later:
            await asyncio.wait_for(batcher.submit(rows(3)), 1)
        ready = batcher.ready
        await batcher.stop()
        return held, str(later.value), ready, batcher.failure

    (first, queued), later, ready, failure = run(main())
    assert first[0].item() == 1.0  # its rows were set before the observer failed
    assert isinstance(queued, Unavailable) and later == str(queued)
    assert later == "model 'm:1' is not ready: the batch worker stopped (ValueError: boom); restart the server"
    assert ready is False and failure == "the batch worker stopped (ValueError: boom)"


# ------------------------------------------------------- the same limits over HTTP
class HeldServer:
    """The colour model served in a thread on one instance; every batch waits at a gate, then
    computes for real."""

    def __init__(self, model, **settings):
        self.gate, self.batches = Gate(), []
        self._context = thread_server(model, **{"instances": 1, **settings})
        self.server, internals = self._context.__enter__()
        self.url = self.server.url
        (entry,) = internals.repository.entries()
        (instance,) = entry.batcher.pool.instances
        real = instance.run

        def held(pixels):  # wait for the gate, then compute for real
            self.gate.started.set()
            self.gate.open.wait(10)
            self.batches.append(len(pixels))
            return real(pixels)

        instance.run = held

    def close(self):
        self.gate.open.set()
        self._context.__exit__(None, None, None)


@pytest.fixture()
def held(color_bundle):
    servers = []

    def start(**settings):
        servers.append(HeldServer(color_bundle, **{"max_queue_delay_ms": 0, **settings}))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def wait_queued(url: str, count: int, timeout: float = 20) -> None:
    wait_for(lambda: metric(url, PENDING) >= count, timeout, f"{count} queued requests")


PENDING = 'nv_inference_pending_request_count{model="colors",version="1"}'
KEY = '{model="colors",version="1"}'


def test_http_queue_full_is_503_and_deadline_is_504(held):
    server = held(max_queue=1, timeout_ms=3000)
    gate = server.gate
    url = server.url + "/v2/models/colors/classify"
    answers: dict[str, httpx.Response] = {}

    def post(key):
        answers[key] = httpx.post(url, content=image_bytes("red"), timeout=30)

    first = threading.Thread(target=post, args=("first",))
    first.start()
    assert gate.started.wait(10)
    queued = threading.Thread(target=post, args=("queued",))
    queued.start()
    wait_queued(server.url, 1)
    full = httpx.post(url, content=image_bytes("red"), timeout=30)
    assert full.status_code == 503 and "the queue is full (1 requests waiting)" in full.json()["error"]
    queued.join(10)
    assert answers["queued"].status_code == 504
    assert "passed its deadline" in answers["queued"].json()["error"]
    gate.open.set()
    first.join(10)
    assert answers["first"].status_code == 504  # it ran past the 3 s timeout while held


def test_concurrent_requests_are_batched_into_one_execution(held):
    """Deterministic batching: 12 requests queue behind a held batch, then run as one execution."""
    server = held(max_batch_size=32, max_queue=64, timeout_ms=20_000)
    url = server.url + "/v2/models/colors/classify?top_k=1"
    colors = ["red", "green", "blue"] * 4
    answers: dict[int, tuple[int, str]] = {}

    def post(index, color):
        response = httpx.post(url, content=image_bytes(color), timeout=30)
        answers[index] = (response.status_code, response.json()["results"][0]["predictions"][0]["label"])

    first = threading.Thread(target=post, args=(-1, "blue"))
    first.start()
    assert server.gate.started.wait(10)
    threads = [threading.Thread(target=post, args=(i, c)) for i, c in enumerate(colors)]
    for thread in threads:
        thread.start()
    wait_queued(server.url, len(colors))
    server.gate.open.set()
    for thread in [first, *threads]:
        thread.join(30)
    assert answers == {-1: (200, "blue"), **{i: (200, c) for i, c in enumerate(colors)}}
    assert server.batches == [1, 12]
    assert metric(server.url, "nv_inference_exec_count_total" + KEY) == 2
    assert metric(server.url, "nv_inference_count_total" + KEY) == 13


def test_a_client_that_disconnects_is_dropped_from_the_queue_and_counted_canceled(held):
    server = held(timeout_ms=20_000)
    url = server.url + "/v2/models/colors/classify"
    answers: list[httpx.Response] = []
    first = threading.Thread(target=lambda: answers.append(httpx.post(url, content=image_bytes("red"),
                                                                      timeout=30)))
    first.start()
    assert server.gate.started.wait(10)
    with socket.create_connection(("127.0.0.1", server.server.port)) as leaving:
        leaving.sendall(raw_request("POST", "/v2/models/colors/classify", image_bytes("green")))
        wait_queued(server.url, 1)
    # the socket is closed: its queued item leaves at once, before any batch runs
    wait_for(lambda: metric(server.url, PENDING) == 0, 5, "the queued item being dropped")
    canceled = 'nv_inference_request_failure_total{model="colors",reason="CANCELED",version="1"}'
    wait_for(lambda: metric(server.url, canceled) == 1, 5, "one CANCELED failure")
    server.gate.open.set()
    first.join(30)
    assert answers[0].status_code == 200
    assert server.batches == [1]  # the departed client's image was never computed
    assert metric(server.url, "nv_inference_request_success_total" + KEY) == 1
    assert metric(server.url, "nv_inference_count_total" + KEY) == 1


# ------------------------------------------------------------ the hand-off
def test_nothing_is_handed_to_wait_behind_a_batch_of_several_images():
    async def main():
        heavy_gate, light_gate, ran = Gate(), Gate(), []

        def tracked(gate, name):
            def run(pixels):
                result = gate(pixels)
                ran.append((name, len(pixels)))
                return result
            return run

        pool = InstancePool([Instance(0, tracked(heavy_gate, 0), "m"), Instance(1, tracked(light_gate, 1), "m")])
        batcher = Batcher(max_batch_size=1, name="m:1", pool=pool)
        batcher.start()
        heavy = asyncio.create_task(batcher.submit(rows(1, 2, 3)))  # one request of three images
        while not heavy_gate.started.is_set():
            await asyncio.sleep(0.005)
        light = asyncio.create_task(batcher.submit(rows(4)))
        while not light_gate.started.is_set():
            await asyncio.sleep(0.005)
        handed = asyncio.create_task(batcher.submit(rows(5)))
        await asyncio.sleep(0.05)
        seen = [i.handed for i in pool.instances]
        light_gate.open.set()  # instance 1 ends its request: the handed one runs there next
        answer = await asyncio.wait_for(handed, 5)
        heavy_gate.open.set()
        await asyncio.gather(heavy, light)
        await batcher.stop()
        return seen, answer[0].item(), ran

    seen, answer, ran = run(main())
    assert seen == [1, 2]  # handed behind the one-image request, not the three-image one
    assert answer == 5.0 and ran[:2] == [(1, 1), (1, 1)]


def test_a_handed_request_past_its_deadline_is_answered_504_and_not_computed():
    async def main():
        gate = Gate()
        batcher = Batcher(gate, max_batch_size=1)
        first = await started(batcher, gate, rows(1))
        late = asyncio.create_task(batcher.submit(rows(2), deadline=time.monotonic() + 0.05))
        await asyncio.sleep(0.02)
        handed = batcher.pool.instances[0].handed
        await asyncio.sleep(0.1)
        gate.open.set()
        results = await asyncio.gather(first, late, return_exceptions=True)
        await asyncio.sleep(0.05)
        await batcher.stop()
        return handed, results, gate.batches

    handed, (first, late), batches = run(main())
    assert handed == 2 and first[0].item() == 1.0
    assert isinstance(late, DeadlineExceeded) and batches == [1]  # the model ran once
