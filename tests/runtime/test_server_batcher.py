"""The dynamic batcher, with a compute function the test can hold: batching, queue limit, deadlines."""

from __future__ import annotations

import asyncio
import threading
import time

import httpx
import numpy as np
import pytest

from graft.runtime.server.batcher import Batcher
from graft.runtime.server.errors import DeadlineExceeded, Unavailable

from server_harness import ThreadServer, image_bytes


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


# ------------------------------------------------------- the same limits over HTTP
@pytest.fixture()
def held_server(color_bundle):
    from graft.runtime.server import ServerConfig, create_app, load_repository

    config = ServerConfig(max_queue=1, timeout_ms=3000, max_queue_delay_ms=0)
    repository = load_repository(color_bundle, config)
    app, _ = create_app(repository, config)
    (entry,) = repository.entries()
    gate, real = Gate(), entry.batcher.run_batch

    def held(pixels):
        gate(pixels[:0])  # wait for the gate, then compute for real
        return real(pixels)

    entry.batcher.run_batch = held
    server = ThreadServer(app)
    yield server, gate
    gate.open.set()
    server.stop()


def wait_queued(url: str, count: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in httpx.get(url + "/metrics", timeout=5).text.splitlines():
            if line.startswith("nv_inference_pending_request_count{") and float(line.split()[-1]) >= count:
                return
        time.sleep(0.02)
    raise AssertionError(f"fewer than {count} requests were queued")


def test_http_queue_full_is_503_and_deadline_is_504(held_server):
    server, gate = held_server
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
