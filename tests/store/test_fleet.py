"""Nodes and workers from heartbeats, lost nodes, metric samples and scaling events."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from batchfarm.actors.backends.store import (
    NewSample,
    NewScalingEvent,
    NodeBeat,
    NodeState,
    Store,
    WorkerBeat,
)


def beat(node: str, time: float, state: str = "up", workers: int = 2, **fields: Any) -> NodeBeat:
    crew = [
        WorkerBeat(i, pid=1000 + i, state="busy", core=i, task=f"job-1/encode/{i}", done=i)
        for i in range(workers)
    ]
    return replace(NodeBeat(node, time, state, workers=crew), **fields)


def test_heartbeats_upsert_nodes_and_workers(store: Store) -> None:
    store.record_heartbeats(
        [beat("n1", 10.0, node_class="gpu", host="ip-10-0-0-1", cpu_percent=55.5, rss_bytes=2**33)]
    )
    store.record_heartbeats([beat("n1", 10.0, node_class="gpu", host="ip-10-0-0-1")])  # again
    store.record_heartbeats(
        [
            beat("n1", 20.0, "draining", workers=1, node_class="gpu", cpu_percent=12.0),
            beat("n2", 20.0, workers=3),
        ]
    )

    nodes = {node.id: node for node in store.nodes()}
    assert set(nodes) == {"n1", "n2"}
    n1 = nodes["n1"]
    assert (n1.state, n1.node_class, n1.first_seen, n1.last_heartbeat) == (
        "draining",
        "gpu",
        10.0,
        20.0,
    )
    assert (n1.cpu_percent, n1.workers, n1.cordoned) == (12.0, 1, False)
    # Worker 1 is no longer in n1's heartbeat: gone from the store too.
    assert [(w.node_id, w.index) for w in store.workers("n1")] == [("n1", 0)]
    assert [w.index for w in store.workers("n2")] == [0, 1, 2]
    worker = store.workers("n2")[2]
    assert (worker.pid, worker.core, worker.state, worker.task, worker.done) == (
        1002,
        2,
        "busy",
        "job-1/encode/2",
        2,
    )
    assert len(store.workers()) == 4
    assert [n.id for n in store.nodes(states=["up"])] == ["n2"]
    assert [n.id for n in store.nodes(node_class="gpu")] == ["n1"]


def test_the_latest_heartbeat_of_a_batch_wins(store: Store) -> None:
    beats = [beat("n1", float(t), cpu_percent=float(t)) for t in (5, 9, 7)]
    beats += [beat(f"node-{i:03}", 1.0, workers=4) for i in range(120)]
    store.record_heartbeats(beats)
    n1 = next(node for node in store.nodes() if node.id == "n1")
    assert (n1.last_heartbeat, n1.cpu_percent) == (9.0, 9.0)
    assert len(store.nodes()) == 121
    assert len(store.workers()) == 2 + 120 * 4


def test_silent_nodes_are_marked_lost_once(store: Store) -> None:
    store.record_heartbeats(
        [beat("a", 100.0), beat("b", 200.0, "stopping"), beat("c", 300.0), beat("d", 50.0)]
    )
    assert store.mark_nodes_lost(before=250.0) == ["a", "d"]
    assert store.mark_nodes_lost(before=250.0) == []

    states = {node.id: (node.state, node.reason) for node in store.nodes()}
    assert states == {
        "a": ("lost", "missed heartbeats"),
        "b": ("stopped", "stopped"),
        "c": ("up", None),
        "d": ("lost", "missed heartbeats"),
    }
    assert {(w.state, w.task) for w in store.workers("a")} == {("lost", None)}
    assert {w.state for w in store.workers("b")} == {"stopped"}
    assert {w.state for w in store.workers("c")} == {"busy"}

    # A lost node that reports again is back.
    store.record_heartbeats([beat("a", 400.0)])
    back = store.nodes(states=[NodeState.UP])
    assert [(node.id, node.reason) for node in back] == [("a", None), ("c", None)]


def test_a_cordon_survives_heartbeats(store: Store) -> None:
    store.record_heartbeats([beat("n1", 1.0)])
    assert store.set_cordoned("n1", True, "failed inputs that succeeded elsewhere")
    assert not store.set_cordoned("nobody", True)
    store.record_heartbeats([beat("n1", 2.0)])
    node = store.nodes()[0]
    assert (node.cordoned, node.cordon_reason) == (True, "failed inputs that succeeded elsewhere")
    assert node.last_heartbeat == 2.0
    assert store.set_cordoned("n1", False)
    released = store.nodes()[0]
    assert (released.cordoned, released.cordon_reason) == (False, None)


def test_metric_samples(store: Store) -> None:
    samples = [
        NewSample(float(t), "cpu_percent", t * 1.5, node=f"n{t % 2}", labels={"core": str(t % 2)})
        for t in range(20)
    ]
    samples += [NewSample(float(t), "queue_depth", float(100 - t)) for t in range(10)]
    assert store.add_samples(samples) == 30

    recent = store.recent_samples("cpu_percent", limit=3)
    assert [(s.time, s.value, s.node_id, s.labels) for s in recent] == [
        (19.0, 28.5, "n1", {"core": "1"}),
        (18.0, 27.0, "n0", {"core": "0"}),
        (17.0, 25.5, "n1", {"core": "1"}),
    ]
    assert [s.time for s in store.recent_samples("cpu_percent", since=16.0, node="n0")] == [
        18.0,
        16.0,
    ]
    depth = store.recent_samples("queue_depth")
    assert len(depth) == 10
    assert depth[0].node_id is None
    assert store.recent_samples("nothing") == []

    assert store.delete_samples(before=10.0) == 20
    assert len(store.recent_samples("cpu_percent")) == 10
    assert store.recent_samples("queue_depth") == []


def test_scaling_events(store: Store) -> None:
    first = store.record_scaling_event(
        NewScalingEvent(
            time=10.0,
            node_class="cpu",
            provider="aws",
            desired_before=0,
            desired_after=4,
            backlog=4000,
            rate=1.25,
            nodes=0,
            reason="backlog needs 4 nodes to drain in 15 min",
            details={"target_drain_s": 900, "deadline": None},
        )
    )
    second = store.record_scaling_event(
        NewScalingEvent(20.0, "gpu", "local", 1, 2, 50, 0.5, 1, "scale out")
    )
    third = store.record_scaling_event(
        NewScalingEvent(30.0, "cpu", "aws", 4, 2, 10, 2.0, 4, "scale in after cooldown")
    )
    assert first < second < third

    events = store.scaling_events()
    assert [e.id for e in events] == [third, second, first]
    cpu = store.scaling_events("cpu")
    assert [(e.desired_before, e.desired_after, e.reason) for e in cpu] == [
        (4, 2, "scale in after cooldown"),
        (0, 4, "backlog needs 4 nodes to drain in 15 min"),
    ]
    assert cpu[1].details == {"target_drain_s": 900, "deadline": None}
    assert (cpu[1].backlog, cpu[1].rate, cpu[1].nodes, cpu[1].provider) == (4000, 1.25, 0, "aws")
    assert [e.id for e in store.scaling_events(since=15.0, limit=1)] == [third]


def test_unicode_in_fleet_names_survives(store: Store) -> None:
    store.record_heartbeats(
        [
            NodeBeat(
                "nœud-été-1",
                1.0,
                "up",
                node_class="gpu-ü",
                host="hôte.例え.jp",
                workers=[WorkerBeat(0, 7, "busy", task="tâche/étape/0")],
            )
        ]
    )
    assert store.set_cordoned("nœud-été-1", True, "échoue sur « clip 🎞 »")
    store.add_samples([NewSample(1.0, "durée_tâche", 1.5, "nœud-été-1", {"étape": "编码 🎬"})])
    store.record_scaling_event(NewScalingEvent(1.0, "gpu-ü", "local", 0, 1, 3, 0.5, 0, "montée ⬆"))

    node = store.nodes()[0]
    assert (node.id, node.node_class, node.host) == ("nœud-été-1", "gpu-ü", "hôte.例え.jp")
    assert node.cordon_reason == "échoue sur « clip 🎞 »"
    assert store.workers("nœud-été-1")[0].task == "tâche/étape/0"
    sample = store.recent_samples("durée_tâche")[0]
    assert (sample.node_id, sample.labels) == ("nœud-été-1", {"étape": "编码 🎬"})
    assert store.scaling_events("gpu-ü")[0].reason == "montée ⬆"
