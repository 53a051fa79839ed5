"""The actor loop: one thread polls the mailbox and a wake-up pipe, and runs every hook.

Everything an actor does happens here, on the thread that called ``run_actor``: frames are
dispatched to ``receive``, timers and queued callbacks run, and signals, which the handlers
only record, are passed to ``on_signal``. So an actor's state needs no locks.
"""

from __future__ import annotations

import collections
import functools
import logging
import math
import os
import signal
import threading
from collections.abc import Callable, Sequence
from types import FrameType
from typing import TYPE_CHECKING

import zmq

from batchfarm.actors.errors import MessageError
from batchfarm.actors.runtime.exits import ExitCode
from batchfarm.actors.runtime.outbox import LINGER_MS, Outbox
from batchfarm.actors.runtime.timers import TimerQueue
from batchfarm.actors.runtime.wake import Waker
from batchfarm.actors.sockets import Rejects, decode_or_count, make_socket

if TYPE_CHECKING:
    from batchfarm.actors.runtime.actor import Actor

log = logging.getLogger(__name__)

#: Frames read from the mailbox per turn, so timers and signals still run under a flood.
MAILBOX_BATCH = 100
#: How often a child checks that its parent is still the one that started it.
PARENT_CHECK_S = 1.0

_Handler = Callable[[int, FrameType | None], object] | int | signal.Handlers | None


class Loop:
    """The running state of one actor: its context, sockets, timers and queues."""

    def __init__(self, actor: Actor, address: str) -> None:
        self.actor = actor
        self.address = address
        self.rejects = Rejects()
        self.timers = TimerQueue()
        self.callbacks: collections.deque[Callable[[], None]] = collections.deque()
        self.signals: collections.deque[int] = collections.deque()
        # Made here, in the process that runs the actor: a context must never cross a fork.
        self.context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self.waker = Waker()
        self.outbox = Outbox(self.context)
        self.mailbox: zmq.Socket[bytes] | None = None
        self.poller = zmq.Poller()
        self.poller.register(self.waker.read_fd, zmq.POLLIN)
        self._saved_handlers: dict[int, _Handler] = {}
        self._saved_wakeup_fd: int | None = None
        #: True once the loop has ended and released its sockets.
        self.ended = False

    # -----------------------------------------------------------------------------------
    # Life

    def run(self, signals: Sequence[int], parent_pid: int | None) -> ExitCode:
        """Bind, start, loop until stopped, stop, and release everything; the exit code."""
        try:
            if not self._bind():
                return ExitCode.CONFIG
            self._install(signals)
            if parent_pid is not None:
                self._watch_parent(parent_pid)
            if self.going() and self.step("on_start", self.actor.on_start):
                while self.going():
                    self._turn()
                # on_stop runs after failures too: it releases what on_start took.
                self.step("on_stop", self.actor.on_stop)
            return self._exit_code()
        finally:
            self.ended = True
            self._restore()
            self._close()

    def going(self) -> bool:
        """True until the actor is asked to stop (a call, so checks are never cached)."""
        return self.actor.stopping is None

    def _exit_code(self) -> ExitCode:
        code = self.actor.stopping
        return ExitCode.OK if code is None else code

    def _bind(self) -> bool:
        self.mailbox = make_socket(self.context, zmq.PULL)
        try:
            self.mailbox.bind(self.address)
        except zmq.ZMQError as e:
            log.error("cannot bind mailbox %s: %s", self.address, e)
            return False
        self.poller.register(self.mailbox, zmq.POLLIN)
        return True

    def _close(self) -> None:
        self.outbox.close(LINGER_MS)  # what on_stop sent still reaches its peers
        if self.mailbox is not None:
            self.mailbox.close()
        # Also closes sockets a hook opened on actor.context and forgot, so term never hangs.
        self.context.destroy(linger=0)
        self.waker.close()

    # -----------------------------------------------------------------------------------
    # Signals: the handlers only record; the loop calls on_signal

    def _install(self, signals: Sequence[int]) -> None:
        if not signals:
            return
        if threading.current_thread() is not threading.main_thread():
            raise ValueError(
                "run_actor installs signal handlers, which only the main thread may do; "
                "run it on the main thread or pass signals=()"
            )
        for signum in signals:
            self._saved_handlers[signum] = signal.signal(signum, self.record_signal)
        self._saved_wakeup_fd = signal.set_wakeup_fd(self.waker.write_fd, warn_on_full_buffer=False)

    def _restore(self) -> None:
        if self._saved_wakeup_fd is not None:
            signal.set_wakeup_fd(self._saved_wakeup_fd)
            self._saved_wakeup_fd = None
        for signum, old in self._saved_handlers.items():
            signal.signal(signum, signal.SIG_DFL if old is None else old)
        self._saved_handlers.clear()

    def record_signal(self, signum: int, frame: FrameType | None = None) -> None:
        """The installed handler: note the signal for the loop (the wake-up fd woke it)."""
        self.signals.append(signum)

    # -----------------------------------------------------------------------------------
    # The loop

    def step(self, what: str, call: Callable[[], None]) -> bool:
        """Run one hook or callback; a failure stops the actor. False once it is stopping."""
        try:
            call()
        except Exception as error:
            log.exception(
                "actor %s at %s failed in %s", type(self.actor).__name__, self.address, what
            )
            self.fail(error)
        return self.going()

    def fail(self, error: Exception) -> None:
        """Stop the actor with FAILED and tell it through on_failure.

        A more telling code (HUNG, ORPHANED) that was already asked for is kept.
        """
        if self.actor.stopping in (None, ExitCode.OK):
            self.actor._stop_code = ExitCode.FAILED
        try:
            self.actor.on_failure(error)
        except Exception:
            log.exception("on_failure of %s raised too", type(self.actor).__name__)

    def _turn(self) -> None:
        """Wait for a frame, a wake-up or the next timer, then run what is due."""
        timeout_ms: int | None = 0
        if not (self.callbacks or self.signals):
            wait = self.timers.seconds_to_next()
            timeout_ms = None if wait is None else math.ceil(wait * 1000)
        ready = dict(self.poller.poll(timeout_ms))
        if self.waker.read_fd in ready:
            self.waker.drain()
        if self.mailbox in ready and not self._read_mailbox():
            return
        while self.signals:
            signum = self.signals.popleft()
            if not self.step(
                f"on_signal({signum})", functools.partial(self.actor.on_signal, signum)
            ):
                return
        # Only those queued so far: a callback that queues another does not starve the loop.
        for _ in range(len(self.callbacks)):
            if not self.step("a callback", self.callbacks.popleft()):
                return
        self.timers.run_due(lambda callback: self.step("a timer", callback))

    def _read_mailbox(self) -> bool:
        """Dispatch up to MAILBOX_BATCH frames; False once the actor is stopping."""
        assert self.mailbox is not None
        for _ in range(MAILBOX_BATCH):
            try:
                parts = self.mailbox.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            if len(parts) != 1:
                error = MessageError("format", f"{len(parts)}-part message; mailboxes take one")
                self.rejects.count(error)
                continue
            record = decode_or_count(parts[0], self.rejects)
            if record is None:
                continue
            if not self.step(
                f"receive({record.KIND})", functools.partial(self.actor.receive, record)
            ):
                return False
        return True

    def _watch_parent(self, parent_pid: int) -> None:
        """A fallback for PR_SET_PDEATHSIG: stop with ORPHANED once the parent is gone."""

        def check() -> None:
            if os.getppid() != parent_pid:
                log.warning("parent %d is gone; %s stops", parent_pid, self.address)
                self.actor._stop_code = ExitCode.ORPHANED

        check()
        self.timers.add(PARENT_CHECK_S, PARENT_CHECK_S, check)
