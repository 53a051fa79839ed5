"""Knowing why tasks fail: poison inputs and bad nodes, judged from the runs recorded.

The results processor hands every batch of runs to :class:`NodeHealth` twice: before the
store records them (:meth:`NodeHealth.judge`) and after (:meth:`NodeHealth.observe`).

- **Poison.** A task whose runs failed on :data:`POISON_NODES` (2) different nodes fails
  for good: the input, not a node, is at fault, and more retries would only fail again
  elsewhere. Its failing run is recorded as final, with the reason ``poison: failed on nodes
  a and b`` (which fails its stage and job, as any final failure does), and the marker
  :func:`~batchfarm.actors.messages.poison_marker` goes to the blob store, so a worker that
  receives the task's pending retry drops it unrun. The nodes a task failed on are kept in
  the store (``tasks.failed_nodes``), so the verdict survives a manager restart.
- **Bad nodes.** A node that failed a task which then succeeded on another node gets a
  strike; a success of its own clears its strikes. At :data:`CORDON_AFTER` (3) strikes the
  node is cordoned (``store.set_cordoned``, with the tasks as the reason) and named by
  :meth:`NodeHealth.take_cordoned`, for the manager's loop to pause it
  (:class:`~batchfarm.actors.manager.cordon.CordonKeeper`). Strikes live in memory: a
  manager restart forgets them, which costs a bad node at most three more failures.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from batchfarm.actors.backends.blobs import BlobStore
from batchfarm.actors.backends.store import RunsApplied, Store, TaskRun, TaskState, TaskView
from batchfarm.actors.messages import poison_marker

log = logging.getLogger(__name__)

#: Different nodes a task must fail on to be poison.
POISON_NODES = 2
#: Strikes (tasks it failed that succeeded elsewhere) after which a node is cordoned.
CORDON_AFTER = 3
#: Most tasks a cordon's reason names.
REASON_TASKS = 3


@dataclass(frozen=True)
class Cordon:
    """A node the judge cordoned, for the manager's loop to pause."""

    node: str
    reason: str
    #: False when the store did not know the node yet (no heartbeat written): the loop
    #: records the cordon once it does.
    recorded: bool


@dataclass
class HealthCounters:
    """What the judge has decided since the manager started."""

    poisoned: int = 0
    cordoned: int = 0


class NodeHealth:
    """Judges poison tasks and bad nodes for one results processor (see the module doc).

    ``blobs`` receives poison markers (None: the verdict is only recorded, and a queued
    retry of the task still runs, its failure recorded as final again). Thread-safe where
    it must be: :meth:`take_cordoned` is called from the manager's loop.
    """

    def __init__(
        self,
        store: Store,
        blobs: BlobStore | None = None,
        *,
        cordon_after: int = CORDON_AFTER,
        poison_nodes: int = POISON_NODES,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if cordon_after < 1 or poison_nodes < 2:
            raise ValueError(
                f"cordon_after {cordon_after}, poison_nodes {poison_nodes}: expected at least 1"
                " and 2"
            )
        self._store = store
        self._blobs = blobs
        self.cordon_after = cordon_after
        self.poison_nodes = poison_nodes
        self._clock = clock
        #: node -> {task id: the node it succeeded on}, its strikes since its last success.
        self._strikes: dict[str, dict[str, str]] = {}
        #: Tasks of the current batch as stored before it (from :meth:`judge`).
        self._before: dict[str, TaskView] = {}
        self._lock = threading.Lock()
        self._cordoned: list[Cordon] = []
        self.counters = HealthCounters()

    # -- before the store records a batch -------------------------------------------------------

    def judge(self, runs: Sequence[TaskRun]) -> list[TaskRun]:
        """The runs to record: a failure that makes its task poison becomes final.

        Reads the stored task of every failed run and of every success after a first attempt
        (the runs that may concern a failure); other successes cost nothing.
        """
        self._before = {}
        judged: list[TaskRun] = []
        failed_on: dict[str, list[str]] = {}  # task id -> nodes, as this batch goes on
        for run in runs:
            if run.ok and run.attempt <= 1:
                judged.append(run)
                continue
            before = self._stored(run)
            if run.ok or before is None or before.state in _SETTLED:
                judged.append(run)
                continue
            nodes = failed_on.setdefault(run.task_id, list(before.failed_nodes or []))
            if run.node not in nodes:
                nodes.append(run.node)
            poison = len(nodes) >= self.poison_nodes
            judged.append(self._poison(run, nodes, before) if poison else run)
        return judged

    def _stored(self, run: TaskRun) -> TaskView | None:
        if run.task_id not in self._before:
            task = self._store.task(run.job, run.stage, run.part)
            if task is None:
                return None
            self._before[run.task_id] = task
        return self._before[run.task_id]

    def _poison(self, run: TaskRun, nodes: Sequence[str], before: TaskView) -> TaskRun:
        reason = poison_reason(nodes)
        if before.reason != reason:  # else a redelivered run: already judged and recorded
            log.warning("task %s is poison: %s", run.task_id, reason)
            self.counters.poisoned += 1
            if not run.final and self._blobs is not None:
                # Before the store records the verdict: a crash in between makes the replay
                # judge it again, and write the marker again.
                marker = poison_marker(run.job, run.stage, run.part)
                self._blobs.put(marker, f"{self._clock():.6f} {reason}\n".encode())
        return dataclasses.replace(run, final=True, reason=reason)

    # -- after it recorded them -----------------------------------------------------------------

    def observe(self, runs: Sequence[TaskRun], applied: RunsApplied) -> None:
        """Count strikes against the nodes the recorded runs prove wrong; cordon the worst."""
        succeeded = set(applied.succeeded)
        for run in runs:
            before = self._before.get(run.task_id)
            if run.ok and run.task_id in succeeded:
                self._strikes.pop(run.node, None)  # a success of its own clears a node
                for node in (before.failed_nodes or []) if before is not None else []:
                    if node != run.node:
                        self._strike(node, run.task_id, run.node)
            elif (
                not run.ok
                and before is not None
                and before.state == TaskState.SUCCEEDED
                and before.node_id not in (None, run.node)
            ):
                # A re-run of a task that had succeeded elsewhere, failed here.
                self._strike(run.node, run.task_id, str(before.node_id))
        self._before = {}

    def _strike(self, node: str, task: str, good_node: str) -> None:
        strikes = self._strikes.setdefault(node, {})
        strikes[task] = good_node
        if len(strikes) < self.cordon_after:
            return
        del self._strikes[node]
        if any(n.id == node and n.cordoned for n in self._store.nodes()):
            return  # failures it had under way when it was cordoned: the reason stays
        named = ", ".join(f"{t} (ok on {n})" for t, n in list(strikes.items())[:REASON_TASKS])
        reason = f"failed {len(strikes)} tasks that succeeded on other nodes: {named}"
        recorded = self._store.set_cordoned(node, True, reason)
        log.warning("node %s cordoned: %s", node, reason)
        with self._lock:
            self._cordoned.append(Cordon(node, reason, recorded))
        self.counters.cordoned += 1

    def take_cordoned(self) -> list[Cordon]:
        """The nodes cordoned since the last call (for the loop to pause at once)."""
        with self._lock:
            taken, self._cordoned = self._cordoned, []
        return taken


#: Task states a failed run cannot change: it is a re-run of a success, or of a cancelled task.
_SETTLED = (TaskState.SUCCEEDED, TaskState.CANCELLED)


def poison_reason(nodes: Sequence[str]) -> str:
    """``poison: failed on nodes a and b`` (``a, b and c`` for more)."""
    names = list(nodes)
    listed = names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"
    return f"poison: failed on nodes {listed}"
