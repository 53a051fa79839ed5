"""Deadlines in job specs; node prices (on demand from the config, spot from EC2 in moto); and
what the results processor makes a task cost when it ran more than once."""

from __future__ import annotations

import time
from dataclasses import replace
from datetime import UTC, datetime

import pytest

from batchfarm.actors.backends import COMPLETIONS, open_queue, open_store, open_task_queues
from batchfarm.actors.backends.store import JobState, NewStage, NodeBeat, WorkerBeat
from batchfarm.actors.codec import decode_body, encode_body
from batchfarm.actors.errors import SpecError
from batchfarm.actors.manager.cost import Ec2SpotPrices, NodePricer, node_price
from batchfarm.actors.manager.health import NodeHealth
from batchfarm.actors.manager.results import ResultsProcessor
from batchfarm.actors.manager.spec import JobSpec, load_spec, spec_from_flags
from batchfarm.actors.messages import AbandonedRun, ErrorInfo, Heartbeat, TaskBody
from batchfarm.actors.settings import Settings
from batchfarm.supervisor.imds import InstanceFacts, read_instance
from tests.fakes.imds import FakeImds
from tests.manager.results_grid import StorePlanner, completion, submit_job
from tests.manager.specs import check_error, one_stage, refused, write_toml
from tests.worker.grid import make_settings


def settings(price: float) -> Settings:
    base = Settings()
    return replace(base, autoscale=replace(base.autoscale, price_per_hour=price))


# -- deadlines in specs ------------------------------------------------------------------------


def test_a_deadline_is_a_toml_date_time_or_iso_text_with_its_zone(tmp_path) -> None:
    from_toml = load_spec(write_toml(tmp_path, one_stage("deadline = 2099-12-31T18:00:00Z")))
    text = one_stage('deadline = "2099-12-31T19:00:00+01:00"')
    from_text = load_spec(write_toml(tmp_path, text, "text.toml"))
    month_end = datetime(2099, 12, 31, 18, tzinfo=UTC).timestamp()
    assert from_toml.deadline == from_text.deadline == month_end
    # Stored and read back, the deadline is the same instant, even once it has passed.
    stored = from_toml.to_stored([], None)
    assert stored["deadline"] == "2099-12-31T18:00:00+00:00"
    assert JobSpec.from_stored({**stored, "deadline": "2001-01-01T00:00:00Z"}).deadline == (
        datetime(2001, 1, 1, tzinfo=UTC).timestamp()
    )


def test_a_deadline_without_a_zone_past_or_before_the_start_is_refused_by_name(tmp_path) -> None:
    cases = {
        "naive.toml": ("deadline = 2099-12-31T18:00:00", "with its zone"),
        "past.toml": ('deadline = "2020-01-01T00:00:00Z"', "in the future"),
        "words.toml": ('deadline = "+6h"', "such as"),
        "early.toml": (
            'start_at = "2099-01-02T00:00:00Z"\ndeadline = "2099-01-01T00:00:00Z"',
            "after the job's start_at",
        ),
    }
    for name, (line, expected) in cases.items():
        refused(write_toml(tmp_path, one_stage(line), name), "deadline", expected)


def test_the_deadline_flag_names_itself_in_errors() -> None:
    by = (time.time() + 7200) // 1
    spec = spec_from_flags("noop", parts=2, deadline=datetime.fromtimestamp(by, UTC).isoformat())
    assert spec.deadline == by
    with pytest.raises(SpecError) as caught:
        spec_from_flags("noop", parts=2, deadline="2020-01-01T00:00:00Z")
    check_error(caught.value, "command line", "--deadline", "in the future")


# -- node prices -------------------------------------------------------------------------------


def beat(**fields: str) -> Heartbeat:
    return Heartbeat(node=fields.pop("node", "i-1"), sent_at=time.time(), state="up", **fields)


def test_on_demand_nodes_take_their_class_price_and_unknown_is_none() -> None:
    assert node_price(settings(0.192), "default") == 0.192
    assert node_price(settings(0.192), "no-such-class") == 0.0
    pricer = NodePricer(settings(0.192), spot=_no_lookup)
    assert pricer(beat()) == 0.192
    # On demand on EC2: the class's price, no lookup.
    assert pricer(beat(instance_type="m5.large", zone="us-east-1a", lifecycle="on-demand")) == (
        0.192
    )
    assert NodePricer(settings(0.0), spot=_no_lookup)(beat()) is None


def _no_lookup(instance_type: str, zone: str) -> float | None:
    raise AssertionError(f"no spot lookup expected ({instance_type} in {zone})")


def test_a_spot_node_is_priced_at_the_spot_price_at_launch_from_ec2(moto, monkeypatch) -> None:
    # boto3 reads the EC2 endpoint from its own variable (an operator's VPC endpoint, say).
    monkeypatch.setenv("AWS_ENDPOINT_URL_EC2", moto.endpoint)
    spot = Ec2SpotPrices()
    # What moto answers for every type and zone it knows: $0.00001 an hour.
    assert spot("m5.large", "us-east-1a") == 0.00001
    assert spot("no-such.type", "us-east-1a") is None

    pricer = NodePricer(settings(0.096), spot=spot)
    node = beat(instance_type="m5.large", zone="us-east-1a", lifecycle="spot")
    first = pricer(node)  # asked in the background: on demand until EC2 answers
    assert first in (0.096, 0.00001)
    pricer.wait()
    assert pricer(node) == 0.00001
    # Asked once per node, at launch: a later price change does not reprice it.
    lookups: list[str] = []
    counted = NodePricer(settings(0.096), spot=lambda t, z: lookups.append(t) or 0.05)
    for _ in range(3):
        counted(node)
    counted.wait()
    assert (counted(node), lookups) == (0.05, ["m5.large"])
    # No spot price (unknown type): the class's on-demand price stands.
    unknown = replace(node, node="i-2", instance_type="no-such.type")
    pricer(unknown)
    pricer.wait()
    assert pricer(unknown) == 0.096


def test_a_node_reads_its_instance_type_zone_and_lifecycle_from_imds() -> None:
    imds = FakeImds().start()
    try:
        imds.paths.update(
            {
                "instance-type": "c6i.2xlarge",
                "placement/availability-zone": "us-east-1b",
                "instance-life-cycle": "spot",
            }
        )
        assert read_instance(imds.url) == InstanceFacts("c6i.2xlarge", "us-east-1b", "spot")
        imds.fail = True
        assert read_instance(imds.url) == InstanceFacts()  # logged; the node still runs
    finally:
        imds.stop()


# -- what runs cost ----------------------------------------------------------------------------


def price_node(store, node: str) -> None:
    """Record ``node`` up at $7.20 an hour on 2 workers: $0.001 a worker-second."""
    crew = [WorkerBeat(i, pid=100 + i, state="idle") for i in range(2)]
    store.record_heartbeats([NodeBeat(node, time.time(), "up", workers=crew, price_per_hour=7.2)])


@pytest.fixture
def grid(tmp_path):
    """A grid's store, task queues and completion queue, with ``node-x`` priced."""
    settings_ = make_settings(tmp_path / "state")
    store = open_store(settings_.store)
    queues = open_task_queues(settings_.queue)
    completions = open_queue(settings_.queue, COMPLETIONS)
    price_node(store, "node-x")
    yield store, queues, completions
    for closing in (queues, completions, store):
        closing.close()


def test_a_task_retried_and_rerun_costs_each_run_once_however_often_reported(grid) -> None:
    store, queues, completions = grid
    submit_job(store, queues, "j", [NewStage("work", 0, "noop")], [[], []])
    bodies = [decode_body(m.body, TaskBody) for m in queues.for_priority(0).receive(10)]
    first, second = sorted(bodies, key=lambda body: body.task_id)
    error = ErrorInfo("TaskError", "worker went away")
    runs = [
        # Part 0 failed, was retried and succeeded; each event is delivered twice.
        replace(completion(first, ok=False, error=error), final=False),
        completion(first, started=1_000_010.0, worker=1, attempt=2),
        # Part 1 ran twice (its body delivered twice), the second run reported twice.
        completion(second, started=1_000_020.0),
        completion(second, started=1_000_030.0, worker=1),
    ]
    for event in [*runs, *runs[:2], runs[3]]:
        completions.send(encode_body(event))
    results = ResultsProcessor(store, queues, completions, StorePlanner())
    while results.step(10):
        pass

    c = results.counters
    assert (c.runs, c.retrying, c.succeeded, c.duplicates, c.redelivered) == (7, 1, 2, 1, 3)
    assert store.job("j").state == JobState.SUCCEEDED  # type: ignore[union-attr]
    # Seven events, four runs of half a second each: $0.0005 a run.
    assert store.task_costs("j", [("work", 0), ("work", 1)]) == pytest.approx(
        {"j/work/0": 0.001, "j/work/1": 0.001}
    )
    assert store.stage_costs_of(["j"])["j"] == pytest.approx({"work": 0.002})
    by_handler = {h.handler: h.dollars for h in store.costs_by_handler()}
    assert by_handler == pytest.approx({"noop": 0.002})


def test_abandoned_runs_cost_their_node_time_and_neither_fail_nor_poison_the_task(
    grid,
) -> None:
    store, queues, completions = grid
    submit_job(store, queues, "j", [NewStage("work", 0, "noop")], [[]])
    [body] = [decode_body(m.body, TaskBody) for m in queues.for_priority(0).receive(10)]
    assert isinstance(body, TaskBody)
    failed = replace(completion(body, ok=False, error=ErrorInfo("TaskError", "EIO")), final=False)
    # Two runs stopped without an outcome on other nodes: a lost lease and a forced
    # pause. Counted as failures, the task would be poison (failed on three nodes).
    abandoned = [
        AbandonedRun(
            job="j",
            stage="work",
            part=0,
            ok=False,
            node=node,
            worker=0,
            attempt=2,
            started_at=1_000_100.0 + n,
            finished_at=1_000_102.0 + n,
        )
        for n, node in enumerate(["node-y", "node-z"])
    ]
    for event in [failed, *abandoned, *abandoned]:
        completions.send(encode_body(event))
    health = NodeHealth(store)
    results = ResultsProcessor(store, queues, completions, StorePlanner(), health=health)
    while results.step(10):
        pass

    c = results.counters
    assert (c.runs, c.retrying, c.abandoned, c.redelivered, c.failures) == (5, 1, 2, 2, 0)
    assert health.counters.poisoned == 0
    task = store.task("j", "work", 0)
    assert task is not None
    assert (task.state, task.attempts, task.failed_nodes) == ("retrying", 1, ["node-x"])
    # Then it succeeds: it costs all three runs ($0.001 a worker-second on node-x; the
    # other nodes have no price yet, so their runs wait to be priced).
    completions.send(encode_body(completion(body, started=1_000_200.0, attempt=3)))
    while results.step(10):
        pass
    assert store.job("j").state == JobState.SUCCEEDED  # type: ignore[union-attr]
    for node in ("node-y", "node-z"):
        price_node(store, node)
    assert store.task_costs("j", [("work", 0)]) == pytest.approx({"j/work/0": 0.001 + 0.004})
