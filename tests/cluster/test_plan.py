"""Sizing Ray actors to the nodes (no cluster needed): every actor fits on a real node."""

from __future__ import annotations

import pytest

from graft.runtime.ray_cluster import Node, RayError, plan_actors


def nodes(*cpus: int) -> list[Node]:
    return [Node("127.0.0.1", f"node{i}", c) for i, c in enumerate(cpus)]


@pytest.mark.parametrize("cpus, overrides, plan", [
    ((1, 1), {}, (2, 1)),             # two 1-CPU nodes: one actor each (not one actor of 2 CPUs)
    ((2,), {}, (1, 2)),
    ((3,), {}, (1, 3)),               # the one actor takes the whole node
    ((16,), {}, (8, 2)),
    ((8, 8), {}, (8, 2)),
    ((1, 4), {}, (5, 1)),             # mixed sizes: the smallest node sets the share
    ((2, 3), {}, (2, 2)),
    ((16,), {"actors": 4}, (4, 4)),   # fewer actors: each gets more of its node
    ((1, 1), {"actors": 1}, (1, 1)),
    ((4, 2), {"cpus_per_actor": 2}, (3, 2)),
])
def test_actors_fit_on_the_nodes(cpus, overrides, plan):
    got = plan_actors(nodes(*cpus), **overrides)
    assert (got.actors, got.cpus) == plan
    assert sum(n.cpus // got.cpus for n in got.nodes) >= got.actors  # every actor has a node


@pytest.mark.parametrize("cpus, overrides, message", [
    ((1, 1), {"actors": 3}, "--actors 3 of 1 CPU(s) each cannot be placed: the nodes hold at most 2 "
                            "(2 node(s): 127.0.0.1 1 CPU, 127.0.0.1 1 CPU)"),
    ((3,), {"actors": 8}, "--actors 8 of 1 CPU(s) each cannot be placed: the nodes hold at most 3 "
                          "(1 node(s): 127.0.0.1 3 CPU)"),
    ((1, 1), {"cpus_per_actor": 2}, "--cpus-per-actor 2: no node has 2 CPUs (the biggest has 1; "
                                    "2 node(s): 127.0.0.1 1 CPU, 127.0.0.1 1 CPU)"),
    ((4, 2), {"cpus_per_actor": 2, "actors": 4}, "--actors 4 of 2 CPU(s) each cannot be placed: the "
                                                 "nodes hold at most 3 (2 node(s): 127.0.0.1 4 CPU, "
                                                 "127.0.0.1 2 CPU)"),
    ((), {}, "the Ray cluster has no live node with a whole CPU; start a node with "
             "`ray start --address HEAD:PORT --num-cpus N`"),
])
def test_an_override_no_node_can_hold_is_refused(cpus, overrides, message):
    with pytest.raises(RayError) as info:
        plan_actors(nodes(*cpus), **overrides)
    assert str(info.value) == message


def test_stream_stops_with_one_line_when_nothing_arrives():
    import threading

    from graft.runtime.ray_cluster import stream

    release = threading.Event()

    def stalled():
        yield 1
        release.wait(30)  # a job whose actors cannot be placed
        yield 2

    got = []
    with pytest.raises(RayError) as info:
        for item in stream(stalled(), 0.5, lambda: "2 actor(s) pending", then="run it again"):
            got.append(item)
    release.set()
    assert got == [1]
    assert str(info.value) == ("nothing came back from the Ray cluster in 0.5 s (--schedule-timeout): "
                               "2 actor(s) pending; run it again")


def test_stream_turns_a_failure_of_ray_into_one_line_with_what_to_do():
    from graft.runtime.ray_cluster import stream

    def failing():
        yield 1
        raise ConnectionError("raylet 127.0.0.1 died\nsecond line")

    with pytest.raises(RayError) as info:
        list(stream(failing(), 30, lambda: "", then="run it again with --resume"))
    assert str(info.value) == ("the job on Ray failed (ConnectionError: raylet 127.0.0.1 died); "
                               "run it again with --resume")
