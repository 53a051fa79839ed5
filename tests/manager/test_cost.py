"""Deadlines in job specs, and node prices: on demand from the config, spot from EC2 (moto)."""

from __future__ import annotations

import time
from dataclasses import replace
from datetime import UTC, datetime

import pytest

from batchfarm.actors.errors import SpecError
from batchfarm.actors.manager.cost import Ec2SpotPrices, NodePricer, node_price
from batchfarm.actors.manager.spec import JobSpec, load_spec, spec_from_flags
from batchfarm.actors.messages import Heartbeat
from batchfarm.actors.settings import Settings
from batchfarm.supervisor.imds import InstanceFacts, read_instance
from tests.fakes.imds import FakeImds
from tests.manager.specs import check_error, one_stage, refused, write_toml


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
