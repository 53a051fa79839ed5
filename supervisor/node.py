"""``batchfarm node``: the supervisor of one worker machine.

It runs as an actor in the main process (signals: SIGTERM and SIGINT drain, a second one
stops at once; SIGHUP reloads the config) and owns three parts (after circus):

- the :class:`~batchfarm.supervisor.watcher.Watcher` spawns, reaps and restarts the worker
  actors, one per core, each pinned to its core (:mod:`batchfarm.supervisor.cpus`);
- commands (``drain``, ``pause``, ``resume``, ``reload``, ``resize``) arrive from the manager
  through :class:`~batchfarm.supervisor.telemetry.Telemetry` or as signals, and are passed
  to the workers' mailboxes;
- heartbeats and metrics go to the manager through the same telemetry link; when the
  manager is away the node works on, and nothing on the data plane waits for it.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from batchfarm.actors.backends import COMPLETIONS, open_queue, open_task_queues
from batchfarm.actors.backends.queue import TaskQueue
from batchfarm.actors.backends.queue.priority import TaskQueues
from batchfarm.actors.codec import encode_body
from batchfarm.actors.errors import BatchfarmError, ConfigError, QueueError
from batchfarm.actors.handlers.ffmpeg import threads_for
from batchfarm.actors.messages import (
    AbandonedRun,
    Command,
    NodeState,
    Record,
    WorkerStatus,
    task_parts,
)
from batchfarm.actors.runtime import Actor, ExitCode
from batchfarm.actors.runtime.process import ActorProcess, mailbox_address, spawn
from batchfarm.actors.settings import Settings
from batchfarm.actors.worker.actor import WorkerActor, WorkerSpec
from batchfarm.actors.worker.leases import hand_back_anywhere
from batchfarm.supervisor import cpus
from batchfarm.supervisor.imds import InstanceFacts, read_instance
from batchfarm.supervisor.metrics import serve as serve_metrics
from batchfarm.supervisor.report import heartbeat, metrics
from batchfarm.supervisor.scalein import ScaleIn
from batchfarm.supervisor.telemetry import Telemetry
from batchfarm.supervisor.watcher import RestartPolicy, Watcher, WatcherEvent

log = logging.getLogger(__name__)

#: How often the node reaps workers and reads the manager's commands.
TICK_S = 0.1
#: Seconds a worker told to stop at once gets before it is killed.
STOP_TIMEOUT_S = 5.0
#: How often the node checks whether idle cores could help the tasks still running.
BALANCE_S = 1.0
#: Consecutive empty checks, a second apart, before ``--until-empty`` drains the node.
EMPTY_CHECKS = 3


class Node(Actor):
    """One machine's supervisor: its workers, their pinning, drain, reload and telemetry."""

    def __init__(
        self,
        settings: Settings,
        name: str,
        run_dir: Path,
        *,
        reload: Callable[[], Settings] | None = None,
        until_empty: bool = False,
    ) -> None:
        self.settings = settings
        self.name = name
        self.run_dir = run_dir
        self._reload = reload
        self.until_empty = until_empty
        self.state: NodeState = "up"
        self.statuses: dict[int, WorkerStatus] = {}
        self.events: list[WatcherEvent] = []
        self._terms = 0
        self._processes: dict[int, ActorProcess] = {}  # the watcher sees only ProcessHandles
        self._pins: dict[int, list[int]] = {}  # each pinned worker's own cores
        self._lent: set[int] = set()  # workers whose tools may use every core for now
        self._empty_checks = 0
        #: What prices this instance on EC2 (read once at start: it does not change).
        self.instance = InstanceFacts()
        self.scratch = Path(settings.grid.state_dir) / "scratch" / f"{_safe(name)}-{os.getpid()}"

    # -- life -------------------------------------------------------------------------------

    def on_start(self) -> None:
        """Plan the cores, start the workers, connect to the manager, start the timers."""
        self.cpus = cpus.available_cpus()
        count = cpus.worker_count(self.settings.node.workers, self.cpus)
        self.sampler = cpus.StatsSampler()
        try:
            self.metrics = serve_metrics(self.settings.node.metrics_listen)
        except ConfigError as error:
            log.error("%s", error)
            self.stop(ExitCode.CONFIG)
            return
        self.scale_in: ScaleIn | None = None
        if self.settings.node.metadata_url:
            self.instance = read_instance(self.settings.node.metadata_url)
            self.scale_in = ScaleIn(self.settings.node)
            self.scale_in.start()
            self.every(1.0, self._check_notices)
        # Its own node class's queues: the backlog it drains and lends cores for is its class's.
        self.queue: TaskQueues = open_task_queues(
            self.settings.queue, (self.settings.node.node_class,)
        )
        #: Where a dead worker's unfinished run is reported (see :meth:`_release`).
        self.completions: TaskQueue = open_queue(self.settings.queue, COMPLETIONS)
        self.telemetry = Telemetry(
            self.context, self.settings.node.manager, self.name, self.settings.node.telemetry_buffer
        )
        self.watcher = Watcher(
            self._spawn, RestartPolicy.from_settings(self.settings.node), on_event=self._on_event
        )
        log.info("node %s: %d workers on cores %s", self.name, count, self.cpus)
        self.watcher.start(count)
        self.every(TICK_S, self._tick)
        self.every(self.settings.node.heartbeat_interval, self._heartbeat)
        if self.until_empty:
            self.every(1.0, self._check_empty)
        if self.settings.node.pin:
            self.every(BALANCE_S, self._balance)

    def on_stop(self) -> None:
        """Kill what still runs, hand back its messages, send a last heartbeat."""
        for slot in self.watcher.alive():
            self.watcher.kill(slot.index)
            if slot.process is not None:
                slot.process.join(1.0)  # reaped below, so its handles are closed
        self.watcher.poll()
        # The last heartbeat says the node is going, so the manager records it stopped,
        # not lost, once it falls silent.
        self.state = "stopping"
        self._heartbeat()
        self.telemetry.close()
        self.queue.close()
        self.completions.close()
        if self.scale_in is not None:
            self.scale_in.stop()
        if self.metrics is not None:
            self.metrics.close()

    def on_signal(self, signum: int) -> None:
        """SIGTERM/SIGINT: drain (twice: stop at once); SIGHUP: reload the config."""
        if signum in (signal.SIGTERM, signal.SIGINT):
            self._terms += 1
            if self._terms == 1:
                self.drain()
            else:
                self.stop_workers()
        elif signum == signal.SIGHUP:
            self.reload()

    def receive(self, message: Record) -> None:
        """Worker status frames from the workers' ``send`` (and commands, for local tools)."""
        if isinstance(message, WorkerStatus):
            self.statuses[message.index] = message
        elif isinstance(message, Command):
            self.command(message)

    # -- commands ---------------------------------------------------------------------------

    def command(self, command: Command) -> None:
        """Carry out a command from the manager."""
        log.info("node %s: command %s %s", self.name, command.name, command.args)
        if command.name == "drain":
            self.drain()
        elif command.name == "stop":
            self.stop_workers()
        elif command.name == "pause":
            self.pause(force=bool(command.args.get("force", False)))
        elif command.name == "resume":
            self.resume()
        elif command.name == "reload":
            self.reload()
        elif command.name == "resize":
            workers = command.args.get("workers")
            if isinstance(workers, int) and not isinstance(workers, bool) and workers >= 0:
                self.resize(workers)
            else:
                log.warning("node %s: resize needs workers >= 0, got %r", self.name, workers)
        else:
            log.warning("node %s: ignored the command %r", self.name, command.name)

    def drain(self, grace: float | None = None) -> None:
        """Stop pulling tasks; running ones get ``grace`` seconds (``drain_grace``), then stop.

        A node already draining keeps draining; a shorter grace (a spot notice arriving
        during a drain) brings the stop forward.
        """
        grace = self.settings.node.drain_grace if grace is None else max(0.0, grace)
        if self.state == "draining" and grace < self.settings.node.drain_grace:
            self.after(grace, self.stop_workers)
        if self.state in ("draining", "stopping"):
            return
        self.state = "draining"
        log.info("node %s: draining (grace %g s)", self.name, grace)
        for slot in self.watcher.alive():
            self._tell(slot.index, Command("drain"))
            self.watcher.stop(slot.index)
        for slot in self.watcher.slots():
            if slot.state in ("backoff", "failed"):
                self.watcher.stop(slot.index)
        self.after(grace, self.stop_workers)

    def stop_workers(self) -> None:
        """Stop every task at once and hand its message back; kill workers that linger."""
        self.state = "stopping"
        for slot in self.watcher.alive():
            self._tell(slot.index, Command("stop"))
            self.watcher.stop(slot.index)
        self.after(STOP_TIMEOUT_S, self._kill_all)

    def pause(self, force: bool = False) -> None:
        """Take no new tasks; with ``force``, stop running ones and hand them back."""
        if self.state == "up":
            self.state = "paused"
        for slot in self.watcher.alive():
            self._tell(slot.index, Command("pause", args={"force": force}))

    def resume(self) -> None:
        """Take tasks again after a pause."""
        if self.state == "paused":
            self.state = "up"
        for slot in self.watcher.alive():
            self._tell(slot.index, Command("resume"))

    def reload(self) -> None:
        """Read the config again and grow or shrink the workers to its count."""
        if self._reload is None or self.state != "up":
            return
        try:
            settings = self._reload()
        except BatchfarmError as error:
            log.error("node %s: reload refused, keeping the running config: %s", self.name, error)
            return
        self.settings = replace(settings, grid=self.settings.grid)
        self.resize(cpus.worker_count(settings.node.workers, self.cpus))

    def resize(self, count: int) -> None:
        """Run ``count`` workers; those beyond it drain (their running tasks finish)."""
        for index in self.watcher.resize(count):
            self._tell(index, Command("drain"))
        log.info("node %s: now %d workers", self.name, count)

    # -- timers -----------------------------------------------------------------------------

    def _tick(self) -> None:
        self.watcher.poll()
        for command in self.telemetry.commands():
            self.command(command)
        self.telemetry.flush()
        if self.state in ("draining", "stopping") and self.watcher.all_stopped():
            log.info("node %s: drained", self.name)
            if self.scale_in is not None:
                self.scale_in.drained()
            self.stop(ExitCode.OK)
        elif self.watcher.slots() and all(s.state == "failed" for s in self.watcher.slots()):
            log.error("node %s: every worker was given up on; stopping", self.name)
            self.stop(ExitCode.FAILED)

    def _heartbeat(self) -> None:
        workers = [s for s in self.watcher.slots() if s.process is not None]
        stats = {s.index: self.sampler.sample(s.process.pid) for s in workers if s.process}
        frame = heartbeat(self, stats, self.telemetry.dropped, socket.gethostname())
        self.telemetry.publish(frame)
        self.telemetry.publish(metrics(self.name, frame))
        if self.metrics is not None:
            self.metrics.update(frame)

    def _check_notices(self) -> None:
        """Drain on notices from the instance metadata service; lifecycle hook calls.

        A spot, rebalance or scale-in notice drains the node; the launch hook is completed
        once the workers take tasks, and heartbeats hold a draining instance at termination.
        """
        assert self.scale_in is not None
        self.scale_in.tick(ready=self.state == "up" and self._workers_ready())
        for notice, grace in self.scale_in.take():
            log.warning(
                "node %s: %s notice (%s): taking no new task, draining with %g s of grace",
                self.name,
                notice.kind,
                notice.detail,
                grace,
            )
            self.drain(grace)

    def _workers_ready(self) -> bool:
        """Whether every live worker reported itself able to take tasks (idle or busy)."""
        alive = self.watcher.alive()
        current = [self.statuses.get(slot.index) for slot in alive]
        return bool(alive) and all(s is not None and s.state in ("idle", "busy") for s in current)

    def _check_empty(self) -> None:
        if self.state != "up":
            return
        try:
            backlog = self.queue.depth().backlog
        except QueueError as error:
            log.warning("node %s: cannot read the queue depth: %s", self.name, error)
            return
        busy = any(s.state == "busy" for s in self.statuses.values())
        self._empty_checks = self._empty_checks + 1 if backlog == 0 and not busy else 0
        if self._empty_checks >= EMPTY_CHECKS:
            log.info("node %s: the queue stayed empty; draining", self.name)
            self.drain()

    def _balance(self) -> None:
        """At the end of a batch, lend idle workers' cores to the tasks still running.

        A pinned worker keeps to its core while there is work for every core. Once the queue
        holds no visible task and some workers sit idle, the running tasks' tools may use
        every core (ffmpeg runs threads beyond ``-threads 1``), so the batch's last tasks end
        sooner; they are pinned again as soon as work comes back.
        """
        current = {
            index: status
            for index, status in self.statuses.items()
            if (process := self._processes.get(index)) is not None and process.pid == status.pid
        }
        busy = [s for s in current.values() if s.state == "busy"]
        lend = False
        if self.state == "up" and busy and any(s.state == "idle" for s in current.values()):
            try:
                lend = self.queue.depth().visible == 0
            except QueueError:
                lend = False
        if lend:
            for status in busy:
                if status.index not in self._lent:
                    cpus.pin_tree(status.pid, self.cpus)
                    self._lent.add(status.index)
            return
        for index in sorted(self._lent):
            lent = current.get(index)
            if lent is not None and index in self._pins:
                cpus.pin_tree(lent.pid, self._pins[index])
        self._lent.clear()

    def _kill_all(self) -> None:
        for slot in self.watcher.alive():
            log.warning("node %s: killing worker %d", self.name, slot.index)
            self.watcher.kill(slot.index)

    # -- workers ----------------------------------------------------------------------------

    def _spawn(self, index: int) -> ActorProcess:
        plan = cpus.pin_plan(max(index + 1, len(self.cpus)), self.cpus)
        pinned = self.settings.node.pin
        workers = cpus.worker_count(self.settings.node.workers, self.cpus)
        threads = threads_for(self.settings.media, pinned, workers, len(self.cpus))
        core = plan[index][0] if pinned and len(plan[index]) == 1 else None
        spec = WorkerSpec(
            index=index,
            node=self.name,
            supervisor=self.address,
            scratch=str(self.scratch / f"worker-{index}"),
            threads=threads,
            core=core,
        )
        process = spawn(
            WorkerActor,
            self.settings,
            spec,
            address=mailbox_address(self.run_dir, f"worker-{index}"),
            name=f"batchfarm-worker-{index}",
            # The child pins itself before it starts a thread, so all of them inherit it.
            cpus=plan[index] if pinned else None,
        )
        self._processes[index] = process
        if pinned:
            self._pins[index] = plan[index]
        return process

    def _tell(self, index: int, command: Command) -> None:
        process = self._processes.get(index)
        current = process is not None and process is self.watcher.slots()[index].process
        if current and process is not None and process.is_alive():
            process.send(command)

    def _on_event(self, event: WatcherEvent) -> None:
        self.events.append(event)
        log.info("node %s: worker %d %s %s", self.name, event.index, event.kind, event.detail)
        if event.kind in ("crashed", "gave_up", "exited", "stopped"):
            self._release(event.index)

    def _release(self, index: int) -> None:
        """Hand back at once the messages a dead worker held (else they wait out their lease).

        The status names receipts only, not their queues: each task queue takes its own.
        """
        status = self.statuses.pop(index, None)
        if status is None:
            return
        self._report_abandoned(status)
        if not status.receipts:
            return
        try:
            hand_back_anywhere(self.queue, status.receipts, 0.0)
        except QueueError as error:
            log.warning(
                "node %s: could not hand back worker %d's tasks: %s", self.name, index, error
            )

    def _report_abandoned(self, status: WorkerStatus) -> None:
        """Report the run a dead worker's last status shows, so its node time is charged.

        The last status may be stale: a run the worker reported itself (it finished, or the
        worker exited after reporting a hung task) has the same node, worker and start, and
        the store counts it once. A run started after the last status is not known here.
        """
        parts = task_parts(status.task)
        if parts is None or status.started_at is None or status.attempt < 1:
            return
        job, stage, part = parts
        event = AbandonedRun(
            job=job,
            stage=stage,
            part=part,
            ok=False,
            node=self.name,
            worker=status.index,
            attempt=status.attempt,
            started_at=status.started_at,
            finished_at=max(time.time(), status.started_at),
        )
        if event.check() is not None:
            return
        try:
            self.completions.send(encode_body(event), durable=False)
        except BatchfarmError as error:
            log.warning(
                "node %s: could not report worker %d's run: %s", self.name, status.index, error
            )


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[:64] or "node"
