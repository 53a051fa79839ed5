"""The nodes' metric samples between their frames and the store: the latest of each series.

A node sends its metric samples with every heartbeat (eight series a node, a thousand nodes:
8,000 samples a second). :class:`SampleFold` keeps only the latest sample of each series
(a node, a name and a set of labels) until the next store write, every
:data:`SAMPLE_INTERVAL_S`: the store holds one sample per series per interval, each at the
time its node measured it. The series are counters and gauges a node sums over its workers,
so the latest value of a counter says all the earlier ones did; a gauge loses the values in
between. Nothing else reads the samples table than the store's :meth:`recent_samples`.

The common case costs one dictionary write a frame: a node's frame usually holds the same
series as its previous one (compared column-wise, in C), and then simply replaces it. A
series missing from a node's latest frame keeps its last sample until the write.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from batchfarm.actors.backends.store import NewSample
from batchfarm.actors.codec_columns import Columns
from batchfarm.actors.messages import Metrics, Sample

#: Seconds between two writes of the held samples to the store.
SAMPLE_INTERVAL_S = 10.0

#: A series of a node: its name and its labels (sorted).
SeriesKey = tuple[str, tuple[tuple[str, str], ...]]


@dataclass
class _Held:
    """A node's latest metrics frame, and its series that frame does not hold."""

    frame: Metrics
    older: dict[SeriesKey, NewSample] = field(default_factory=dict)


class SampleFold:
    """The latest sample of every node's series, held until :meth:`clear`.

    ``limit`` is the most samples held; a frame that would hold more is dropped whole (and
    counted by :meth:`add`). A frame with the series its node's previous one had never
    adds any.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._nodes: dict[str, _Held] = {}
        self._count = 0

    @property
    def pending(self) -> int:
        """Samples held for the next write."""
        return self._count

    def add(self, metrics: Metrics) -> int:
        """Hold ``metrics``' samples over their series' earlier ones; returns how many dropped."""
        node, samples = metrics.node, metrics.samples
        held = self._nodes.get(node)
        if held is None:
            if self._count + len(samples) > self.limit:
                return len(samples)
            self._nodes[node] = _Held(metrics)
            self._count += len(samples)
            return 0
        before = held.frame.samples
        if sample_column(before, "name") == sample_column(samples, "name") and sample_column(
            before, "labels"
        ) == sample_column(samples, "labels"):
            held.frame = metrics  # the same series, newer values
            return 0
        # Other series than before: the ones only the earlier frame had stay as they were.
        older = dict(held.older)
        older.update(_keyed(held.frame))
        for key in _keyed(metrics):
            older.pop(key, None)
        count = self._count - len(before) - len(held.older) + len(samples) + len(older)
        if count > self.limit:
            return len(samples)
        held.frame, held.older, self._count = metrics, older, count
        return 0

    def samples(self) -> list[NewSample]:
        """Every sample held, a node's older series first (call :meth:`clear` once stored)."""
        out: list[NewSample] = []
        for node, held in self._nodes.items():
            out.extend(held.older.values())
            frame = held.frame
            out.extend(
                NewSample(time=frame.sent_at, name=name, value=value, node=node, labels=labels)
                for name, value, labels in zip(
                    sample_column(frame.samples, "name"),
                    sample_column(frame.samples, "value"),
                    sample_column(frame.samples, "labels"),
                    strict=True,
                )
            )
        return out

    def clear(self) -> None:
        """The store took :meth:`samples`: hold nothing."""
        self._nodes.clear()
        self._count = 0


def _keyed(frame: Metrics) -> dict[SeriesKey, NewSample]:
    """A frame's samples by series (a series repeated in it keeps its last sample)."""
    samples = frame.samples
    return {
        (name, tuple(sorted(labels.items()))): NewSample(
            time=frame.sent_at, name=name, value=value, node=frame.node, labels=labels
        )
        for name, value, labels in zip(
            sample_column(samples, "name"),
            sample_column(samples, "value"),
            sample_column(samples, "labels"),
            strict=True,
        )
    }


def sample_column(samples: Sequence[Sample], name: str) -> list[Any]:
    """Field ``name`` of every sample: the decoded column itself when there is one."""
    if isinstance(samples, Columns):
        return samples.column(name)
    return [getattr(sample, name) for sample in samples]
