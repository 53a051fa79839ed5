"""The watcher: spawns worker processes into numbered slots, reaps them, restarts the crashed.

Pure bookkeeping around process handles (no psutil, no ZeroMQ): the node loop calls
:meth:`Watcher.poll` on every tick and acts on the events it returns. The restart rules follow
circus's watcher and its flapping plugin:

- A process that exits while its slot is not stopping has **crashed**. Its slot waits
  ``policy.delay(n)`` seconds (``n``: its crashes within ``policy.window_s``, so the wait
  doubles while the crashes keep coming and falls back once they stop) and then starts again.
- An exit with code 0 while not stopping counts as a crash too. A worker exits 0 only when
  told to stop, so an unexpected clean exit is a worker that cannot stay up (a bad setting, a
  lost mailbox); restarting it at once and uncounted would spin as fast as it can exit. It is
  reported as ``exited`` (not ``crashed``) so the two causes can be told apart.
- A slot whose crashes within ``policy.window_s`` reach ``policy.limit`` is given up: state
  ``failed``, one ``gave_up`` event, never started again until :meth:`Watcher.reset`.
- A slot marked stopping (:meth:`Watcher.stop`, :meth:`Watcher.kill`, a shrinking
  :meth:`Watcher.resize`) is reaped as ``stopped`` whatever its exit code, and stays down.
"""

from __future__ import annotations

import logging
import math
import signal
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, Protocol

from batchfarm.actors.errors import BatchfarmError
from batchfarm.actors.settings import NodeSettings

log = logging.getLogger(__name__)


class ProcessHandle(Protocol):
    """A started worker process, as the watcher needs it (``ActorProcess`` is one).

    ``exitcode`` follows :mod:`multiprocessing`: None while running, the exit status once
    exited, minus the signal number when a signal ended it.
    """

    name: str

    @property
    def pid(self) -> int:
        """The process id."""
        ...

    @property
    def exitcode(self) -> int | None:
        """None while running; the exit status (or ``-signal``) once exited."""
        ...

    def is_alive(self) -> bool:
        """True until the process has exited (and reaps it once it has)."""
        ...

    def terminate(self) -> None:
        """Send SIGTERM."""
        ...

    def kill(self) -> None:
        """Send SIGKILL."""
        ...

    def join(self, timeout: float | None = None) -> int | None:
        """Wait up to ``timeout`` seconds for the exit; the exit code, or None if still up."""
        ...

    def close(self) -> None:
        """Release the handle's resources; the process must have exited."""
        ...


SlotState = Literal["starting", "running", "backoff", "stopping", "stopped", "failed"]
EventKind = Literal["started", "exited", "crashed", "restarting", "gave_up", "stopped"]

#: States in which a slot holds a process.
_WITH_PROCESS: frozenset[SlotState] = frozenset({"starting", "running", "stopping"})
#: States in which a slot holds no process and none is scheduled.
_AT_REST: frozenset[SlotState] = frozenset({"stopped", "failed"})


class SlotError(BatchfarmError, LookupError):
    """A watcher call named a worker slot that does not exist."""


@dataclass
class Slot:
    """One worker index and the process currently filling it.

    ``starting`` means spawned but not yet seen alive by a :meth:`Watcher.poll`; ``running``
    means seen alive. ``restarts`` counts spawns after the slot's first; ``crashes`` holds the
    times of the crashes within the policy's window.
    """

    index: int
    state: SlotState
    process: ProcessHandle | None = None
    restarts: int = 0
    crashes: deque[float] = field(default_factory=deque)
    #: When a slot in ``backoff`` starts again (the watcher's clock).
    next_start: float | None = None
    last_exit: int | None = None
    given_up_reason: str | None = None


@dataclass(frozen=True)
class RestartPolicy:
    """How crashed workers are restarted: doubling backoff, and a crash limit per window."""

    #: Wait before the first restart after a crash, in seconds.
    backoff_s: float
    #: Longest wait, however many crashes came before.
    backoff_max_s: float
    #: Crashes within ``window_s`` after which the slot is given up.
    limit: int
    #: Seconds over which crashes are counted.
    window_s: float

    def __post_init__(self) -> None:
        """Refuse values that would make restarts spin or never happen."""
        for name, value in (("backoff_s", self.backoff_s), ("backoff_max_s", self.backoff_max_s)):
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"RestartPolicy.{name} is {value!r}, expected 0 or more seconds")
        if not (math.isfinite(self.window_s) and self.window_s > 0):
            raise ValueError(f"RestartPolicy.window_s is {self.window_s!r}, expected seconds > 0")
        if self.limit < 1:
            raise ValueError(f"RestartPolicy.limit is {self.limit!r}, expected at least 1")

    @classmethod
    def from_settings(cls, node: NodeSettings) -> RestartPolicy:
        """The policy the ``[node]`` settings describe."""
        return cls(
            backoff_s=node.restart_backoff,
            backoff_max_s=node.restart_backoff_max,
            limit=node.restart_limit,
            window_s=node.restart_window,
        )

    def delay(self, consecutive_crashes: int) -> float:
        """Seconds to wait after the n-th crash: ``backoff_s * 2**(n-1)``, at most the cap."""
        doublings = min(max(consecutive_crashes, 1) - 1, 1000)  # 2**1000 still fits a float
        return min(math.ldexp(self.backoff_s, doublings), self.backoff_max_s)


@dataclass(frozen=True)
class WatcherEvent:
    """Something that happened to a slot, for the node's log and telemetry.

    ``started``: a process was spawned. ``crashed``: it exited non-zero while not stopping.
    ``exited``: it exited 0 while not stopping (handled as a crash). ``restarting``: the slot
    waits out its backoff (``detail`` says how long). ``gave_up``: too many crashes; the slot
    is ``failed``. ``stopped``: a stopping slot's process is gone (or it had none).
    """

    kind: EventKind
    index: int
    pid: int | None
    exitcode: int | None
    detail: str


def describe_exit(exitcode: int | None) -> str:
    """``exit code 3``, ``killed by SIGKILL``: an exit status as people read it."""
    if exitcode is None:
        return "no exit code"
    if exitcode < 0:
        try:
            return f"killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"killed by signal {-exitcode}"
    return f"exit code {exitcode}"


class Watcher:
    """Owns the worker slots: spawn, reap, restart with backoff, give up, stop and kill.

    ``spawn(index)`` starts the worker for a slot and returns its handle; an ``OSError`` from
    it (no memory, too many processes) counts as a crash of that slot. Every event goes to
    ``on_event`` as it happens and is also returned by the next :meth:`poll`, so the node can
    collect them in one place. The watcher never waits on a process: call :meth:`poll` on
    every tick of the node loop, and at the latest at :meth:`next_deadline`.
    """

    def __init__(
        self,
        spawn: Callable[[int], ProcessHandle],
        policy: RestartPolicy,
        clock: Callable[[], float] = time.monotonic,
        on_event: Callable[[WatcherEvent], None] | None = None,
    ) -> None:
        self._spawn = spawn
        self.policy = policy
        self._clock = clock
        self._on_event = on_event
        self._slots: dict[int, Slot] = {}
        self._pending: list[WatcherEvent] = []
        #: Stopping slots to start again once reaped (a shrink undone by a grow).
        self._respawn: set[int] = set()

    # -- lifecycle ----------------------------------------------------------------------

    def start(self, count: int) -> None:
        """Spawn slots ``0 .. count-1``; call once, then :meth:`resize`."""
        if self._slots:
            raise RuntimeError(f"watcher already started with {len(self._slots)} slots")
        self.resize(count)

    def poll(self) -> list[WatcherEvent]:
        """Reap exited processes, schedule or give up restarts, start slots whose wait is over.

        Returns every event since the previous call, including those of other calls.
        """
        now = self._clock()
        for slot in self.slots():
            proc = slot.process
            if proc is not None:
                if proc.is_alive():
                    if slot.state == "starting":
                        slot.state = "running"
                    continue
                self._reap(slot, proc, now)
            # A zero backoff restarts within this poll.
            if slot.state == "backoff" and slot.next_start is not None and slot.next_start <= now:
                slot.restarts += 1
                self._launch(slot, now)
        events, self._pending = self._pending, []
        return events

    def stop(self, index: int) -> None:
        """Mark a slot stopping: its process is reaped as ``stopped`` and not restarted.

        The node has already told the worker to drain; this only changes how its exit is
        read. A slot without a process (waiting to restart) is stopped at once; a failed
        slot stays failed. Stopping twice is harmless.
        """
        slot = self._slot(index)
        self._respawn.discard(index)
        if slot.state in ("starting", "running"):
            slot.state = "stopping"
        elif slot.state == "backoff":
            slot.state = "stopped"
            slot.next_start = None
            self._emit("stopped", slot, None, slot.last_exit, "stopped while waiting to restart")

    def terminate(self, index: int) -> None:
        """Mark a slot stopping and send its process SIGTERM (the worker drains, then exits)."""
        self.stop(index)
        proc = self._slot(index).process
        if proc is not None:
            proc.terminate()

    def kill(self, index: int) -> None:
        """Mark a slot stopping and SIGKILL its process now (second SIGTERM, grace over)."""
        self.stop(index)
        proc = self._slot(index).process
        if proc is not None:
            proc.kill()

    def resize(self, count: int) -> list[int]:
        """Make slots ``0 .. count-1`` the wanted ones; return the slots to drain, highest first.

        Growing starts the missing and stopped slots (a stopping one starts again once it is
        reaped; a failed one waits for :meth:`reset`). Shrinking marks the slots at and above
        ``count`` that hold a process as stopping and returns them: the node tells those
        workers to drain. Slots above ``count`` without a process are stopped at once.
        ``resize(0)`` is the whole node's shutdown.
        """
        if count < 0:
            raise ValueError(f"worker count is {count!r}, expected 0 or more")
        now = self._clock()
        for index in range(count):
            slot = self._slots.get(index)
            if slot is None:
                slot = self._slots[index] = Slot(index=index, state="stopped")
                self._launch(slot, now)
            elif slot.state == "stopped":
                slot.crashes.clear()
                slot.restarts += 1
                self._launch(slot, now)
            elif slot.state == "stopping":
                self._respawn.add(index)
        to_drain = []
        for index in sorted(self._slots, reverse=True):
            if index < count:
                break
            slot = self._slots[index]
            if slot.state in ("starting", "running"):
                to_drain.append(index)
            elif slot.state in ("backoff", "failed"):
                # A failed or backing-off slot above the count is no longer wanted.
                slot.state = "stopped"
                slot.next_start = None
                slot.given_up_reason = None
                self._emit("stopped", slot, None, slot.last_exit, "no longer wanted")
            self.stop(index)
        return to_drain

    def reset(self, index: int) -> None:
        """Give a failed slot another chance: forget its crashes and start it now.

        A slot that is not failed is left alone, so a repeated command does no harm.
        """
        slot = self._slot(index)
        if slot.state != "failed":
            return
        slot.crashes.clear()
        slot.given_up_reason = None
        slot.restarts += 1
        self._launch(slot, self._clock())

    # -- views --------------------------------------------------------------------------

    def slots(self) -> list[Slot]:
        """Every slot the watcher knows, by index (stopped ones included)."""
        return [self._slots[i] for i in sorted(self._slots)]

    def alive(self) -> list[Slot]:
        """Slots holding a process (starting, running or stopping), as the last poll saw them."""
        return [s for s in self.slots() if s.state in _WITH_PROCESS]

    def all_stopped(self) -> bool:
        """True when no slot holds a process or waits to start one (failed ones count)."""
        return all(s.state in _AT_REST for s in self._slots.values()) and not self._respawn

    def next_deadline(self) -> float | None:
        """When the next backoff ends (on the watcher's clock); None if no slot waits.

        Exits are not deadlines: the node polls on its own tick (or on SIGCHLD) for those.
        """
        waits = [s.next_start for s in self._slots.values() if s.state == "backoff"]
        return min((w for w in waits if w is not None), default=None)

    # -- internals ----------------------------------------------------------------------

    def _slot(self, index: int) -> Slot:
        slot = self._slots.get(index)
        if slot is None:
            known = f"0 to {max(self._slots)}" if self._slots else "none yet"
            raise SlotError(f"no worker slot {index!r}; slots are {known}")
        return slot

    def _launch(self, slot: Slot, now: float) -> None:
        slot.next_start = None
        try:
            proc = self._spawn(slot.index)
        except OSError as e:
            slot.process = None
            self._crashed(slot, None, None, now, f"could not start: {e}")
            return
        slot.process = proc
        slot.state = "starting"
        self._emit("started", slot, proc.pid, None, f"{proc.name} started")

    def _reap(self, slot: Slot, proc: ProcessHandle, now: float) -> None:
        code = proc.exitcode
        pid = proc.pid
        proc.close()
        slot.process = None
        slot.last_exit = code
        if slot.state == "stopping":
            slot.state = "stopped"
            self._emit("stopped", slot, pid, code, describe_exit(code))
            if slot.index in self._respawn:
                self._respawn.discard(slot.index)
                slot.crashes.clear()
                slot.restarts += 1
                self._launch(slot, now)
            return
        if code == 0:
            self._crashed(slot, pid, code, now, "exited with code 0 without being told to stop")
        else:
            self._crashed(slot, pid, code, now, describe_exit(code))

    def _crashed(self, slot: Slot, pid: int | None, code: int | None, now: float, why: str) -> None:
        self._emit("exited" if code == 0 else "crashed", slot, pid, code, why)
        while slot.crashes and slot.crashes[0] <= now - self.policy.window_s:
            slot.crashes.popleft()
        slot.crashes.append(now)
        n = len(slot.crashes)
        window = f"{n} crash{'es' if n > 1 else ''} in {self.policy.window_s:g} s"
        if n >= self.policy.limit:
            slot.state = "failed"
            slot.next_start = None
            slot.given_up_reason = f"{window} (limit {self.policy.limit}); last: {why}"
            log.error("worker %d given up: %s", slot.index, slot.given_up_reason)
            self._emit("gave_up", slot, pid, code, slot.given_up_reason)
            return
        wait = self.policy.delay(n)
        slot.state = "backoff"
        slot.next_start = now + wait
        log.warning("worker %d %s; restarting in %g s (%s)", slot.index, why, wait, window)
        self._emit("restarting", slot, pid, code, f"in {wait:g} s ({window})")

    def _emit(
        self, kind: EventKind, slot: Slot, pid: int | None, code: int | None, detail: str
    ) -> None:
        event = WatcherEvent(kind=kind, index=slot.index, pid=pid, exitcode=code, detail=detail)
        self._pending.append(event)
        if self._on_event is not None:
            self._on_event(event)
