"""Joining a Ray cluster, sizing actors to its nodes, and streaming results with a limit.

Shared by ``graft predict --engine ray`` (``ray_job``) and ``graft build --engine ray``
(``builder.ray_build``):

- ``ray_session`` joins ``--address`` (failing in seconds when it does not answer,
  and saying so in one line when the cluster refuses the client's token), reuses a
  running Ray, or starts a local one.
- ``plan_actors`` sizes the actor pool to the nodes, not to the cluster: an actor
  reserves CPUs on one node, so it must fit on a real node. By default every whole
  CPU of every node is used; ``--actors`` / ``--cpus-per-actor`` override, and an
  override that no node can hold is refused before anything is scheduled.
- ``stream`` consumes Ray Data's results in a thread, so the driver never waits
  without a limit: when nothing arrives for ``--schedule-timeout`` seconds it stops
  with one line saying what it waits for and what the nodes offer. Without a
  progress bar, ``Heartbeat`` prints a line of rows done, total and rate.

Ray is an optional extra (``graft[ray]``); nothing here imports it at module level.
"""

from __future__ import annotations

import contextlib
import queue
import re
import sys
import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterator

from graft.errors import GraftError, first_line

SCHEDULE_TIMEOUT = 60.0   # seconds without a result before a job says what it waits for
HEARTBEAT_SECONDS = 15.0  # a progress line this often when there is no progress bar
DEFAULT_SHARE = 2         # CPUs per actor by default (model and decode threads), when nodes have them
AUTH_HELP = ("set RAY_AUTH_MODE=token and give the cluster's token (RAY_AUTH_TOKEN, "
             "RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token)")


class RayError(GraftError):
    """Ray is missing, the cluster cannot be reached, or the job cannot be placed on it."""


@dataclass(frozen=True)
class Node:
    ip: str
    node_id: str
    cpus: int  # whole CPUs


@dataclass(frozen=True)
class ActorPlan:
    actors: int
    cpus: int                  # per actor: its reservation, model threads and decode threads
    nodes: tuple[Node, ...]

    def describe(self) -> str:
        return f"{self.actors} actor(s) of {self.cpus} CPU(s) each on {describe_nodes(self.nodes)}"


def describe_nodes(nodes) -> str:
    return f"{len(nodes)} node(s): " + ", ".join(f"{n.ip} {n.cpus} CPU" for n in nodes)


def cluster_nodes(ray) -> list[Node]:
    """The live nodes with at least one whole CPU."""
    nodes = [Node(n["NodeManagerAddress"], n["NodeID"], int(n["Resources"].get("CPU", 0)))
             for n in ray.nodes() if n.get("Alive")]
    return [n for n in nodes if n.cpus >= 1]


def _capacity(nodes, share: int) -> int:
    """How many actors of ``share`` CPUs the nodes hold (an actor lives on one node)."""
    return sum(n.cpus // share for n in nodes)


def plan_actors(nodes, actors: int | None = None, cpus_per_actor: int | None = None) -> ActorPlan:
    """Actors and CPUs per actor that fit on ``nodes`` (see the module docstring).

    By default each actor takes up to two CPUs (the smallest node's count when that is
    less) and there are as many as the nodes hold; then each actor's share grows to the
    most that still places them all.

    Raises:
        RayError: no node has a CPU, or an override asks for more than the nodes hold.
    """
    nodes = tuple(nodes)
    if not nodes:
        raise RayError("the Ray cluster has no live node with a whole CPU; start a node with "
                       "`ray start --address HEAD:PORT --num-cpus N`")
    biggest = max(n.cpus for n in nodes)
    if cpus_per_actor and cpus_per_actor > biggest:
        raise RayError(f"--cpus-per-actor {cpus_per_actor}: no node has {cpus_per_actor} CPUs "
                       f"(the biggest has {biggest}; {describe_nodes(nodes)})")
    if actors is None:
        actors = _capacity(nodes, cpus_per_actor or min(DEFAULT_SHARE, min(n.cpus for n in nodes)))
    share = cpus_per_actor or max((s for s in range(1, biggest + 1) if _capacity(nodes, s) >= actors),
                                  default=0)
    if not share or _capacity(nodes, share) < actors:
        share = share or 1
        raise RayError(f"--actors {actors} of {share} CPU(s) each cannot be placed: the nodes hold at "
                       f"most {_capacity(nodes, share)} ({describe_nodes(nodes)})")
    return ActorPlan(actors, share, nodes)


def offers(ray) -> str:
    """What each live node has free, e.g. '127.0.0.1: 0 of 1 CPU free'."""
    try:
        from ray._private.state import available_resources_per_node

        free = available_resources_per_node()
    except Exception:  # an internal API: fall back to the cluster's totals
        free = {}
    def cpus(node: Node) -> str:  # Ray leaves out a resource that is all taken
        return f"{free[node.node_id].get('CPU', 0):g}" if node.node_id in free else "?"

    parts = [f"{n.ip}: {cpus(n)} of {n.cpus} CPU free" for n in cluster_nodes(ray)]
    return ", ".join(parts) or "no live node with a CPU"


def stream(items: Iterator, limit: float, waiting_for: Callable[[], str], then: str) -> Iterator:
    """Yield from ``items``, pulled in a thread; RayError when none arrives within ``limit`` s,
    or when Ray gives up (a lost node it could not recover from), ending with ``then``: what
    to do next."""
    box: queue.Queue = queue.Queue(maxsize=2)
    stop = threading.Event()

    def put(entry) -> None:
        while not stop.is_set():
            with contextlib.suppress(queue.Full):
                box.put(entry, timeout=0.5)
                return

    def pump() -> None:
        try:
            for item in items:
                put(("item", item))
            put(("end", None))
        except BaseException as exc:  # handed to the consumer, raised there
            put(("error", exc))

    threading.Thread(target=pump, name="graft-ray-results", daemon=True).start()
    try:
        while True:
            try:
                kind, value = box.get(timeout=limit)
            except queue.Empty:
                raise RayError(f"nothing came back from the Ray cluster in {limit:g} s "
                               f"(--schedule-timeout): {waiting_for()}; {then}") from None
            if kind == "end":
                return
            if kind == "error" and isinstance(value, (GraftError, KeyboardInterrupt)):
                raise value
            if kind == "error":
                raise RayError(f"the job on Ray failed ({type(value).__name__}: {first_line(value, 300)}); "
                               f"{then}") from value
            yield value
    finally:
        stop.set()


class Heartbeat:
    """A line on stderr every ``every`` seconds: what is done of the total, and the rate."""

    def __init__(self, label: str, total: int, enabled: bool = True, every: float = HEARTBEAT_SECONDS):
        self.label, self.total, self.enabled, self.every = label, total, enabled, every
        self.done = 0
        self.started = self.last = time.monotonic()

    def add(self, count: int) -> None:
        self.done += count
        now = time.monotonic()
        if self.enabled and (now - self.last >= self.every or self.done == self.total):
            self.last = now
            rate = self.done / max(now - self.started, 1e-9)
            print(f"{self.label}: {self.done}/{self.total} rows, {rate:,.1f} rows/s", file=sys.stderr,
                  flush=True)


@contextlib.contextmanager
def ray_session(address: str | None = None, num_cpus: int | None = None):
    """Join ``address``, reuse a running Ray, or start a local one (stopped on exit)."""
    if address and num_cpus:
        raise RayError("--num-cpus sizes a local Ray; with --address the cluster's nodes have their "
                       "own CPUs: leave --num-cpus out (--cpus-per-actor sets each actor's share)")
    ray = _import_ray()
    started_here = _connect(ray, address, num_cpus)
    try:
        yield ray
    finally:
        if started_here:
            ray.shutdown()


def _import_ray():
    try:
        import ray
        import ray.data  # noqa: F401  (the engines need it; fail here, in one line)
    except ImportError:
        raise RayError("--engine ray needs Ray Data; install graft[ray]") from None
    return ray


def _connect(ray, address: str | None, num_cpus: int | None) -> bool:
    """Join ``address``, reuse a running Ray, or start a local one; True if started here."""
    if ray.is_initialized():
        return False
    options = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
    where = address or "a local Ray"
    try:
        if address:
            _check_reachable(address)
            ray.init(address=address, **options)
        else:
            ray.init(num_cpus=num_cpus, **options)
    except (ConnectionError, RuntimeError, ValueError, ray.exceptions.RayError) as exc:
        refused = _auth_refusal(exc)
        if refused:
            raise RayError(f"{where} refused this client: {refused}; {AUTH_HELP}") from None
        raise RayError(f"cannot start or join {where} ({first_line(exc, 200)}); "
                       "check --address, or leave it out to start a local Ray") from None
    return True


def _auth_refusal(exc: BaseException) -> str:
    """Ray's own words when the cluster refused the client's token, else ''.

    ray.init wraps the refusal (a ConnectionError caused by a RuntimeError whose text
    ends with Ray's AuthenticationError); its message is kept up to its long help text.
    """
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        text = str(exc)
        if type(exc).__name__ == "AuthenticationError":
            text = f"AuthenticationError: {text}"
        found = re.search(r"AuthenticationError: (.*)", text)
        if found:
            message = found.group(1).split(" Ensure that", 1)[0].strip()
            return message.replace("RPC error: ", "").rstrip(".")[:300]
        exc = exc.__cause__ or exc.__context__
    return ""


def _check_reachable(address: str) -> None:
    """Fail in seconds, not after Ray's minutes of retries, when HOST:PORT does not answer."""
    import socket

    host, sep, port = address.split("://", 1)[-1].rpartition(":")
    if not sep or not port.isdigit():
        return  # "auto" and the like: Ray resolves them
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=10).close()
    except OSError as exc:
        raise RayError(f"cannot reach a Ray cluster at {address} ({exc.strerror or exc}); "
                       "check --address, or leave it out to start a local Ray") from None


def dataset_blocks(count: int, batch_size: int, actors: int = 1) -> int:
    """Blocks for ``count`` rows: about four batches each, at least two per actor (so a lost
    actor's share is small and every actor gets work), 1 to 200."""
    return max(1, min(200, max(2 * actors, -(-count // (batch_size * 4))), count))
