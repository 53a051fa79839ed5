"""Metric samples held between store writes: the latest sample of each series, bounded."""

from __future__ import annotations

from batchfarm.actors.codec import decode_frame, encode_frame
from batchfarm.actors.manager.telemetry_samples import SampleFold
from batchfarm.actors.messages import Metrics, Sample


def frame(node: str, at: float, **series: float) -> Metrics:
    """A node's metrics frame, decoded as the manager gets it (its samples column-wise)."""
    samples = [
        Sample("m", value, {"k": key}) if key != "plain" else Sample("m", value)
        for key, value in series.items()
    ]
    decoded = decode_frame(encode_frame(Metrics(node=node, sent_at=at, samples=samples)))
    assert isinstance(decoded, Metrics)
    return decoded


def held(fold: SampleFold) -> set[tuple]:
    return {(s.node, s.time, tuple(s.labels.items()), s.value) for s in fold.samples()}


def test_each_series_keeps_its_latest_sample_until_cleared() -> None:
    fold = SampleFold(limit=100)
    assert fold.add(frame("n1", 1.0, a=1.0, b=1.0)) == 0
    assert fold.add(frame("n2", 1.0, plain=5.0)) == 0
    assert fold.add(frame("n1", 2.0, a=2.0, b=2.0)) == 0  # the same series: replaced
    assert fold.pending == 3
    assert fold.add(frame("n1", 3.0, a=3.0)) == 0  # b not sent: its last sample stays
    assert held(fold) == {
        ("n1", 3.0, (("k", "a"),), 3.0),
        ("n1", 2.0, (("k", "b"),), 2.0),
        ("n2", 1.0, (), 5.0),
    }
    assert fold.add(frame("n1", 4.0, b=4.0, c=4.0)) == 0  # b back, a now the older one
    assert held(fold) == {
        ("n1", 3.0, (("k", "a"),), 3.0),
        ("n1", 4.0, (("k", "b"),), 4.0),
        ("n1", 4.0, (("k", "c"),), 4.0),
        ("n2", 1.0, (), 5.0),
    }
    assert fold.pending == 4
    fold.clear()
    assert (fold.pending, fold.samples()) == (0, [])
    fold.add(frame("n1", 5.0, a=5.0))
    assert held(fold) == {("n1", 5.0, (("k", "a"),), 5.0)}


def test_series_beyond_the_limit_are_dropped_and_counted() -> None:
    fold = SampleFold(limit=3)
    assert fold.add(frame("n1", 1.0, a=1.0, b=1.0)) == 0
    assert fold.add(frame("n2", 1.0, a=1.0, b=1.0)) == 2  # it would hold 4
    assert fold.add(frame("n1", 2.0, c=2.0)) == 0  # a and b stay: 3
    # Newer values of the series held are never dropped.
    assert fold.add(frame("n1", 3.0, a=3.0, b=3.0)) == 0
    assert fold.add(frame("n1", 4.0, d=4.0)) == 1  # a, b, c and d would be 4
    assert held(fold) == {
        ("n1", 3.0, (("k", "a"),), 3.0),
        ("n1", 3.0, (("k", "b"),), 3.0),
        ("n1", 2.0, (("k", "c"),), 2.0),
    }
