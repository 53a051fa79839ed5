"""A simulated fleet and clock on which scaling policies replay the same bursty day.

Used by ``autoscale_bench.py``. One second per tick: jobs arrive, visible tasks go to free
workers of running nodes, tasks finish, nodes boot (60 to 120 s after launch) and are
terminated. A policy looks at the fleet every ``interval_s`` and says how many nodes it wants
and, when shrinking, which to remove; what it cannot name, the fleet picks the way an Auto
Scaling group does (any in-service instance, busy or not). A task on a terminated node is
lost from that node and comes back to the queue when its visibility timeout runs out, as an
SQS message does, and runs again.

Node-hours run from launch to termination (boot time is paid for), and are split into
booting, busy (worker-seconds of tasks over the node's workers) and idle (the rest: whole idle
nodes and the free workers of busy ones). A job's latency runs from its submission until its
last task is done. Instance ids are random hex, as EC2's are (the policy draws each idle
node's hold from its id), fixed by the seed.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field

from batchfarm.actors.manager.autoscale import Decision, FleetView, ScalingLimits, decide

#: How long an interrupted task stays invisible before it runs again (the queue's timeout).
VISIBILITY_S = 300
#: The range of boot times, launch to taking work.
BOOT_S = (60, 120)


@dataclass
class Task:
    """One task: its job, how long it runs, and its history."""

    job: int
    duration: float
    visible_at: float
    runs: int = 0
    done_at: float | None = None


@dataclass
class Node:
    """One instance: launch, boot, the tasks on its workers, and when it went idle."""

    id: str
    launched: float
    ready_at: float
    workers: int
    running: dict[int, tuple[Task, float]] = field(default_factory=dict)
    idle_since: float | None = None
    ended: float | None = None


@dataclass(frozen=True)
class Job:
    """A job of the day: when it is submitted and its tasks' durations."""

    submitted: float
    durations: tuple[float, ...]


#: A policy: (now, the fleet's view) -> decision. ``view`` is what our manager measures.
Policy = Callable[[float, "Sim"], Decision]


@dataclass
class Result:
    """What one replay of the day cost and delivered."""

    node_hours: float
    latencies: list[float]
    lost: int
    reruns: int
    peak_nodes: int
    #: Where the node-hours went: booting, running tasks, and idle workers.
    booting_hours: float
    busy_hours: float
    idle_hours: float


class Sim:
    """The fleet, the queue and the clock of one replay."""

    def __init__(
        self, jobs: list[Job], workers: int, seed: int, history: tuple[float, ...] = ()
    ) -> None:
        self.jobs = jobs
        self.workers = workers
        self.seed = seed
        self.random = random.Random(seed)
        self.now = 0.0
        self.nodes: list[Node] = []
        self.ended: list[Node] = []
        self.queue: deque[Task] = deque()
        self.hidden: list[Task] = []  # interrupted: back when their visibility runs out
        self.tasks: list[Task] = []
        # Durations the manager already knows (its store holds last month's runs).
        self.done_durations: list[float] = list(history)
        self._serial = 0
        self._left: Counter[int] = Counter()  # job -> tasks not done yet
        self._node_s = {"booting": 0.0, "busy": 0.0, "idle": 0.0}

    # -- what policies read ----------------------------------------------------------------

    @property
    def waiting(self) -> int:
        """Visible tasks plus those hidden after an interruption (the queue's backlog)."""
        return len(self.queue) + len(self.hidden)

    @property
    def visible(self) -> int:
        """Visible messages only: what SQS's ApproximateNumberOfMessagesVisible reports."""
        return len(self.queue)

    @property
    def in_flight(self) -> int:
        return sum(len(n.running) for n in self.nodes)

    def in_service(self) -> list[Node]:
        return [n for n in self.nodes if n.ready_at <= self.now]

    def view(self) -> FleetView:
        """What the batchfarm manager measures: backlog, in flight, task time, idle nodes."""
        recent = self.done_durations[-200:]
        return FleetView(
            now=self.now,
            waiting=self.waiting,
            in_flight=self.in_flight,
            task_s=sum(recent) / len(recent) if recent else None,
            nodes=len(self.nodes),
            idle_since={n.id: n.idle_since for n in self.in_service() if n.idle_since is not None},
            # Every task of a job exists from its submission: a job is open until it is done.
            open_jobs=sum(1 for left in self._left.values() if left),
        )

    # -- the day ---------------------------------------------------------------------------

    def run(self, policy: Policy, interval_s: float, end_s: float) -> Result:
        """Replay the day under ``policy`` until ``end_s`` (or every task is done, later)."""
        arrivals = sorted(self.jobs, key=lambda j: j.submitted)
        next_job = 0
        peak = 0
        last_eval = -math.inf
        while self.now < end_s or (self.waiting + self.in_flight and self.now < 4 * end_s):
            while next_job < len(arrivals) and arrivals[next_job].submitted <= self.now:
                job = arrivals[next_job]
                for duration in job.durations:
                    task = Task(next_job, duration, self.now)
                    self.tasks.append(task)
                    self.queue.append(task)
                    self._left[next_job] += 1
                next_job += 1
            self._tick()
            if self.now - last_eval >= interval_s:
                last_eval = self.now
                self._apply(policy(self.now, self))
            peak = max(peak, len(self.nodes))
            self.now += 1.0
        return self._result(peak)

    def _tick(self) -> None:
        for task in [t for t in self.hidden if t.visible_at <= self.now]:
            self.hidden.remove(task)
            self.queue.append(task)
        for node in self.in_service():
            for slot, (task, end) in list(node.running.items()):
                if end <= self.now:
                    task.done_at = self.now
                    self.done_durations.append(task.duration)
                    self._left[task.job] -= 1
                    del node.running[slot]
            for slot in range(node.workers):
                if slot not in node.running and self.queue:
                    task = self.queue.popleft()
                    task.runs += 1
                    node.running[slot] = (task, self.now + task.duration)
            if node.running:
                node.idle_since = None
            elif node.idle_since is None:
                node.idle_since = self.now
        # This second of every node, launched and not yet terminated, is paid for.
        for node in self.nodes:
            if node.ready_at > self.now:
                self._node_s["booting"] += 1.0
            else:
                busy = len(node.running) / node.workers
                self._node_s["busy"] += busy
                self._node_s["idle"] += 1.0 - busy

    def _apply(self, decision: Decision) -> None:
        for node_id in decision.remove:
            node = next(n for n in self.nodes if n.id == node_id)
            self._terminate(node)
        while len(self.nodes) < decision.desired:
            self._serial += 1
            boot = self.random.uniform(*BOOT_S)
            self.nodes.append(Node(self._instance_id(), self.now, self.now + boot, self.workers))
        while len(self.nodes) > decision.desired:
            # The group picks: any instance, busy or not (no scale-in protection).
            self._terminate(self.random.choice(self.nodes))

    def _instance_id(self) -> str:
        # Like EC2's: 17 hex digits, here fixed by the seed and the launch's number (its own
        # hash, so the boot times drawn from the seed's generator stay as they were).
        digest = hashlib.blake2b(f"{self.seed}/{self._serial}".encode(), digest_size=9)
        return f"i-{digest.hexdigest()[:17]}"

    def _terminate(self, node: Node) -> None:
        for task, _end in node.running.values():
            task.visible_at = self.now + VISIBILITY_S
            self.hidden.append(task)
        node.running.clear()
        node.ended = self.now
        self.nodes.remove(node)
        self.ended.append(node)

    def _result(self, peak: int) -> Result:
        for node in list(self.nodes):
            node.ended = self.now
            self.ended.append(node)
        node_s = sum((n.ended or self.now) - n.launched for n in self.ended)
        finished: dict[int, float] = {}
        lost = 0
        for task in self.tasks:
            if task.done_at is None:
                lost += 1
            else:
                finished[task.job] = max(finished.get(task.job, 0.0), task.done_at)
        order = sorted(self.jobs, key=lambda j: j.submitted)
        latencies = [finished[i] - order[i].submitted for i in finished]
        reruns = sum(max(0, t.runs - 1) for t in self.tasks)
        split = {part: seconds / 3600 for part, seconds in self._node_s.items()}
        return Result(
            node_s / 3600,
            latencies,
            lost,
            reruns,
            peak,
            booting_hours=split["booting"],
            busy_hours=split["busy"],
            idle_hours=split["idle"],
        )


def batchfarm_policy(limits: ScalingLimits) -> Policy:
    """The autoscaler's real policy code on the simulated fleet."""

    def policy(now: float, sim: Sim) -> Decision:
        return decide(sim.view(), limits)

    return policy


def target_tracking_policy(limits: ScalingLimits, target_per_instance: float) -> Policy:
    """What a user sets up by hand: AWS target tracking on visible messages per instance.

    Modelled on AWS's documented behaviour: the metric is the queue's visible-message count
    per in-service instance, sampled each minute; the scale-out alarm needs 3 breaching
    minutes and the scale-in alarm 15 (below 90 % of the target); capacity becomes
    ``ceil(visible / target)`` within the group's limits; the group picks which instances to
    terminate. From zero instances it launches as the formula says (generous: AWS's metric
    math divides by the in-service count).
    """
    state = {"over": 0, "under": 0}

    def policy(now: float, sim: Sim) -> Decision:
        visible = sim.visible
        in_service = max(1, len(sim.in_service()))
        per_instance = visible / in_service
        state["over"] = state["over"] + 1 if per_instance > target_per_instance else 0
        state["under"] = state["under"] + 1 if per_instance < 0.9 * target_per_instance else 0
        wanted = math.ceil(visible / target_per_instance)
        wanted = min(max(wanted, limits.min_nodes), limits.max_nodes)
        current = len(sim.nodes)
        if current == 0 and visible and state["over"] + state["under"] >= 3:
            # Per-instance math has no instance to divide by: launch what the formula says.
            return Decision(wanted, (), wanted, "from zero")
        if state["over"] >= 3 and wanted > current:
            return Decision(wanted, (), wanted, "alarm high")
        if state["under"] >= 15 and wanted < current:
            return Decision(wanted, (), wanted, "alarm low")
        return Decision(current, (), wanted, "hold")

    return policy
