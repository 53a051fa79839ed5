"""The autoscaler's policy: how many nodes a node class needs now, and which idle ones may go.

The policy is a pure function of what the manager measures (:class:`FleetView`) and the
class's limits (:class:`ScalingLimits`), so the autoscaler actor, its tests and the
``scripts/bench/autoscale`` simulation all run the same code on real or simulated clocks.

How it sizes the fleet:

- **Backlog, not queue length.** The work left is every visible, delayed and in-flight task
  times the measured task duration; the fleet is sized to finish it within
  ``target_drain_s``, never with more workers than tasks. Nodes still booting count as
  capacity, so a burst asks for its nodes once rather than once per evaluation.
- **Deadlines.** A job with a deadline needs its remaining work done by then, starting once
  new nodes have booted; the fleet is the larger of the two sizes.
- **Out quickly, in slowly, never a busy node.** Growth takes effect at once. Shrinking only
  ever removes nodes that have been idle for ``idle_s`` (a node is idle when its workers
  found nothing to take), so scale-in never interrupts a task, and a lull while a job is
  still going (its next stage's tasks come as this one's parts are done) does not shed nodes
  a minute before they are needed.
- **Idle means the minimum** (zero allowed), **stepping down**: once nothing is queued or
  running and no unfinished job has work left in the class, only a new job can bring work.
  Then each idle node goes after its own share of ``idle_s`` instead of all of them at its
  end (see :func:`hold_s`): on average 0.58 of it, and the fleet steps down to
  ``min_nodes`` rather than dropping at once.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True)
class ScalingLimits:
    """The scaling configuration of one node class."""

    min_nodes: int = 0
    max_nodes: int = 10
    #: Worker actors per node (one per core, usually).
    workers_per_node: int = 1
    #: Time within which the backlog should be done: the latency users accept.
    target_drain_s: float = 600.0
    #: Seconds a node must have been idle before scale-in may remove it (once no work is left
    #: at all, each node's own share of it: :func:`hold_s`). About a boot: removing a node and
    #: launching another later costs a boot of paid time with no work, so holding an idle
    #: node that long never costs more than twice the best choice (ski rental).
    idle_s: float = 90.0
    #: Task duration to assume before any task of the class has been measured.
    default_task_s: float = 60.0
    #: Seconds a new node takes to boot and take work (deadlines plan around it).
    boot_s: float = 90.0

    def __post_init__(self) -> None:
        if not 0 <= self.min_nodes <= self.max_nodes:
            raise ValueError(
                f"min_nodes {self.min_nodes}, max_nodes {self.max_nodes}: expected "
                "0 <= min_nodes <= max_nodes"
            )
        if self.workers_per_node < 1 or self.target_drain_s <= 0:
            raise ValueError("workers_per_node must be >= 1 and target_drain_s > 0")


@dataclass(frozen=True)
class DeadlineWork:
    """A job with a deadline: the tasks it has left and when it must be done."""

    job_id: str
    tasks_left: int
    #: Seconds since the epoch (or the simulation's clock) by which the job must be done.
    deadline: float


@dataclass(frozen=True)
class FleetView:
    """What the manager measures about one node class at one moment."""

    now: float
    #: Tasks waiting to be taken (visible and delayed messages).
    waiting: int
    #: Tasks held by workers.
    in_flight: int
    #: Mean measured duration of the class's recent tasks; None until one has run.
    task_s: float | None
    #: Nodes asked for: booting plus running (the group's desired capacity).
    nodes: int
    #: Node id -> when it last became idle, for each running node with no task.
    idle_since: dict[str, float] = field(default_factory=dict)
    deadlines: Sequence[DeadlineWork] = ()
    #: Unfinished jobs with a stage of this class still to do: work that may still come
    #: beyond the queue (a stage's tasks are made as the stage before it gets its parts done).
    open_jobs: int = 0


@dataclass(frozen=True)
class Decision:
    """What the autoscaler decided, and why (it is stored as a scaling event)."""

    #: The fleet size to ask for.
    desired: int
    #: Idle nodes to drain and remove (``nodes - desired`` of them when shrinking).
    remove: tuple[str, ...]
    #: What the backlog alone needs and what deadlines need, before limits.
    needed: int
    reason: str
    #: Whether every deadline can be met at the desired size (None when there is none).
    deadlines_met: bool | None = None


def decide(view: FleetView, limits: ScalingLimits) -> Decision:
    """The fleet this node class needs now (see the module docstring)."""
    backlog = view.waiting + view.in_flight
    task_s = view.task_s if view.task_s else limits.default_task_s
    for_backlog = _nodes_for(backlog, task_s, limits.target_drain_s, limits)
    for_deadlines, met = _deadline_nodes(view, task_s, limits)
    needed = max(for_backlog, for_deadlines)
    want = min(max(needed, limits.min_nodes), limits.max_nodes)
    if met is not None and needed > limits.max_nodes:
        met = False
    if want > view.nodes:
        if for_deadlines > for_backlog:
            why = f"deadlines need {for_deadlines} node(s)"
        else:
            why = f"{backlog} task(s) of ~{task_s:.0f} s need {needed} node(s) to finish " + (
                f"within {limits.target_drain_s:.0f} s"
            )
        capped = " (capped at the class's maximum)" if needed > limits.max_nodes else ""
        return Decision(want, (), needed, f"scale out: {why}{capped}", met)
    if want < view.nodes:
        settled = backlog == 0 and view.open_jobs == 0
        idle = _idle_long_enough(view, limits, settled)
        remove = tuple(idle[: view.nodes - want])
        if remove:
            if settled:
                why = (
                    f"idle for their share of {limits.idle_s:.0f} s; nothing queued, running "
                    "or left in any job"
                )
            elif backlog == 0:
                why = f"idle for {limits.idle_s:.0f} s; nothing queued or running"
            else:
                why = f"idle for {limits.idle_s:.0f} s; {backlog} task(s) left"
            return Decision(
                view.nodes - len(remove),
                remove,
                needed,
                f"scale in: {len(remove)} node(s) {why}",
                met,
            )
        return Decision(view.nodes, (), needed, "hold: no node idle long enough to remove", met)
    return Decision(view.nodes, (), needed, "hold: the fleet matches the backlog", met)


def _nodes_for(tasks: int, task_s: float, within_s: float, limits: ScalingLimits) -> int:
    """Nodes that finish ``tasks`` of ``task_s`` each within ``within_s`` (none for no task)."""
    if tasks <= 0:
        return 0
    # A task runs on one worker: more workers than tasks cannot finish sooner.
    workers = min(tasks, math.ceil(tasks * task_s / max(within_s, task_s)))
    return math.ceil(workers / limits.workers_per_node)


def _deadline_nodes(
    view: FleetView, task_s: float, limits: ScalingLimits
) -> tuple[int, bool | None]:
    """Nodes the deadlines need together, and whether every deadline is still reachable."""
    if not view.deadlines:
        return 0, None
    rate = 0.0  # worker-seconds of work per second, over all deadline jobs
    met = True
    for job in view.deadlines:
        # Work starts on new nodes only once they have booted.
        left = job.deadline - view.now - limits.boot_s
        if left < task_s:
            # Too late to run even one task after a boot: as much as may help, and say so.
            met = False
            left = task_s
        rate += job.tasks_left * task_s / left
    return math.ceil(math.ceil(rate) / limits.workers_per_node), met


def hold_s(node: str, limits: ScalingLimits, settled: bool) -> float:
    """Seconds ``node`` must have been idle before scale-in may remove it.

    ``idle_s`` while work may still come (``settled`` false). Once only a new job can bring
    work, removing an idle node is a bet: if work comes back, a new node costs a boot of paid
    time with no work (about ``idle_s``). Holding every node the whole ``idle_s`` costs at
    most twice the best choice; holding each for a random share of it, drawn with density
    e^x / (e - 1) on [0, 1], costs on average at most e / (e - 1) = 1.58 times the best
    choice (randomized ski rental), and 0.58 of ``idle_s`` per node when no work comes. The
    draw is the node's id hashed, so a node's hold is the same at every decision and across
    manager restarts, and a fleet of nodes steps down over ``idle_s`` rather than at once.
    """
    if not settled:
        return limits.idle_s
    digest = hashlib.blake2b(node.encode(), digest_size=8).digest()
    share = int.from_bytes(digest, "big") / 2**64  # uniform in [0, 1)
    return limits.idle_s * math.log1p(share * (math.e - 1))


def _idle_long_enough(view: FleetView, limits: ScalingLimits, settled: bool) -> list[str]:
    """Idle nodes that may go, longest idle first."""
    ready = [(since, node) for node, since in view.idle_since.items()]
    return [
        node for since, node in sorted(ready) if view.now - since >= hold_s(node, limits, settled)
    ]
