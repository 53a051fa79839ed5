"""Actors the runtime tests run, in threads or in spawned children (so: importable by name).

They report to the test by sending Command records to its reply mailbox: ``id`` names the
event and ``args`` carries its details (see :func:`note`).
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

from batchfarm.actors.errors import ConfigError
from batchfarm.actors.messages import Command, Record
from batchfarm.actors.runtime import Actor, ActorProcess, ExitCode, mailbox_address, spawn


def note(event: str, **details: Any) -> Command:
    """A report to the test."""
    return Command(name="reload", id=event, args=details)


class Echo(Actor):
    """Sends back what it receives; ``id`` of a Command selects a behaviour."""

    def __init__(self, reply_to: str) -> None:
        self.reply_to = reply_to

    def tell(self, event: str, **details: Any) -> None:
        self.send(self.reply_to, note(event, **details))

    def on_start(self) -> None:
        self.tell("started", pid=os.getpid(), cpus=sorted(os.sched_getaffinity(0)))

    def receive(self, message: Record) -> None:
        what = message.id if isinstance(message, Command) else ""
        if what == "crash":
            raise RuntimeError("asked to crash")
        if what == "rejects":
            self.tell("rejects", total=self.rejects.total, **self.rejects.by_reason)
        elif what == "stop":
            self.stop()
        else:
            self.send(self.reply_to, message)

    def on_signal(self, signum: int) -> None:
        self.tell("signal", signum=signum)
        super().on_signal(signum)

    def on_failure(self, error: BaseException) -> None:
        self.tell("failure", error=str(error))

    def on_stop(self) -> None:
        self.tell("stopped")


class Nester(Actor):
    """Spawns an Echo of its own: actors may supervise actors."""

    def __init__(self, reply_to: str, run_dir: str) -> None:
        self.reply_to = reply_to
        self.run_dir = Path(run_dir)
        self.child: ActorProcess | None = None

    def on_start(self) -> None:
        address = mailbox_address(self.run_dir, "nested")
        self.child = spawn(Echo, self.reply_to, address=address, name="nested")

    def on_stop(self) -> None:
        if self.child is not None:
            self.child.terminate()
            self.child.join(10)
            self.child.close()


class Sleeper(Actor):
    """Does nothing until stopped: the child of the parent-death test."""


def broken_config() -> Actor:
    """A factory that finds its configuration bad."""
    raise ConfigError("test.toml", "node.workers", -1, "expected a whole number from 1")


def broken_factory() -> Actor:
    """A factory that fails for another reason."""
    raise RuntimeError("cannot build")


class Timed(Actor):
    """Records when its timers and callbacks run, then stops (runs in a thread in tests)."""

    def __init__(self) -> None:
        self.events: list[tuple[str, float]] = []
        self.started = 0.0
        self.ticks = 0

    def mark(self, name: str) -> None:
        self.events.append((name, time.monotonic() - self.started))

    def on_start(self) -> None:
        self.started = time.monotonic()
        self.after(0.15, lambda: self.mark("after-0.15"))
        self.after(0.05, lambda: self.mark("after-0.05"))
        self.after(0.05, lambda: self.mark("after-0.05-second"))
        self.after(0.10, lambda: self.mark("never")).cancel()
        self.ticker = self.every(0.04, self.tick)
        self.after(0.3, self.stop)

    def tick(self) -> None:
        self.ticks += 1
        self.mark(f"tick-{self.ticks}")
        if self.ticks == 3:
            self.ticker.cancel()


class Idle(Actor):
    """Runs no timers, so its loop waits in poll until something wakes it."""

    def __init__(self) -> None:
        self.ready = threading.Event()
        self.callbacks_ran_on: list[int] = []

    def on_start(self) -> None:
        self.ready.set()

    def ran(self) -> None:
        self.callbacks_ran_on.append(threading.get_ident())


class SelfSignaller(Actor):
    """Sends itself a signal from on_start, and records how on_signal was called."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        self.in_start = False
        self.calls: list[tuple[int, bool, int]] = []

    def on_start(self) -> None:
        self.in_start = True
        os.kill(os.getpid(), self.signum)
        # Python runs signal handlers between bytecodes: give it plenty of them here.
        for _ in range(10_000):
            pass
        self.in_start = False

    def on_signal(self, signum: int) -> None:
        self.calls.append((signum, self.in_start, threading.get_ident()))
        self.stop(ExitCode.HUNG)
