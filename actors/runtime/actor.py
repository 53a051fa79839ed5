"""The actor: a process with a ZeroMQ mailbox, lifecycle hooks and timers.

Subclass :class:`Actor`, override the hooks you need, and run it with :func:`run_actor` (in
this process) or :func:`~batchfarm.actors.runtime.process.spawn` (in a child process)::

    class Echo(Actor):
        def receive(self, message: Record) -> None:
            self.send(REPLY_TO, message)

Hooks run one at a time on the loop's thread, so an actor's own state needs no locks. An
exception that escapes a hook, a timer or a callback is logged, passed to ``on_failure``,
and stops the actor with :attr:`ExitCode.FAILED`.
"""

from __future__ import annotations

import collections
import logging
import signal
from collections.abc import Callable, Sequence

import zmq

from batchfarm.actors.messages import Record
from batchfarm.actors.runtime.exits import ExitCode
from batchfarm.actors.runtime.loop import Loop
from batchfarm.actors.runtime.timers import Timer, check_delay
from batchfarm.actors.sockets import Rejects

__all__ = ["Actor", "Timer", "run_actor"]

log = logging.getLogger(__name__)


class Actor:
    """An actor: a process with a ZeroMQ mailbox, lifecycle hooks and timers.

    The hooks (:meth:`on_start`, :meth:`receive`, :meth:`on_stop`, :meth:`on_failure`,
    :meth:`on_signal`) do nothing by default. The runtime's services (:attr:`address`,
    :attr:`context`, :meth:`every`, :meth:`send`, ...) are valid once the actor runs, that
    is from ``on_start`` on; the constructor runs before, so it should only store settings.
    Subclasses need not call ``Actor.__init__`` (there is none).
    """

    # Class-level defaults, so subclasses' constructors need not call a base constructor.
    _loop: Loop | None = None
    _stop_code: ExitCode | None = None

    # -----------------------------------------------------------------------------------
    # Hooks

    def on_start(self) -> None:
        """Set up, once the mailbox is bound and before the first frame is received."""

    def receive(self, message: Record) -> None:
        """Handle one decoded frame from the mailbox (bad frames never get here)."""

    def on_stop(self) -> None:
        """Clean up once the loop has ended (also after a failure, if on_start completed)."""

    def on_failure(self, error: BaseException) -> None:
        """React to an exception that escaped a hook, timer or callback; then the actor stops.

        The exception is already logged; the exit code will be :attr:`ExitCode.FAILED`.
        """

    def on_signal(self, signum: int) -> None:
        """Handle a signal run_actor was told to catch; by default SIGTERM stops cleanly.

        It runs on the loop like any hook (the real signal handler only records the
        signal), so it may do anything a hook may.
        """
        if signum == signal.SIGTERM:
            self.stop()

    # -----------------------------------------------------------------------------------
    # Services of the runtime

    @property
    def address(self) -> str:
        """This actor's mailbox endpoint (``ipc://...``)."""
        return self._running().address

    @property
    def context(self) -> zmq.Context[zmq.Socket[bytes]]:
        """The ZeroMQ context, made inside the process that runs the actor."""
        return self._running().context

    @property
    def rejects(self) -> Rejects:
        """Bad frames received, counted by reason and dropped."""
        return self._running().rejects

    @property
    def dropped(self) -> collections.Counter[str]:
        """Frames :meth:`send` dropped because the destination's queue was full, by address."""
        return self._running().outbox.dropped

    @property
    def stopping(self) -> ExitCode | None:
        """The code the actor will exit with once its loop ends; None while it goes on."""
        return self._stop_code

    def every(self, interval_s: float, callback: Callable[[], None]) -> Timer:
        """Run ``callback`` on the loop every ``interval_s`` seconds, first in one interval."""
        interval = check_delay("interval_s", interval_s, positive=True)
        return self._running().timers.add(interval, interval, callback)

    def after(self, delay_s: float, callback: Callable[[], None]) -> Timer:
        """Run ``callback`` on the loop once, in ``delay_s`` seconds."""
        delay = check_delay("delay_s", delay_s, positive=False)
        return self._running().timers.add(delay, None, callback)

    def call_soon_threadsafe(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` on the loop as soon as it can; safe from any thread.

        The loop wakes at once. Callbacks queued after the loop has ended never run.
        """
        loop = self._running(or_ended=True)  # a thread may outlive the loop by a moment
        loop.callbacks.append(callback)
        loop.waker.wake()

    def send(self, address: str, record: Record) -> None:
        """Push ``record`` to the mailbox at ``address``, never blocking the loop.

        Sockets are kept per address. When the destination's queue is full the frame is
        dropped and counted in :attr:`dropped`.
        """
        self._running().outbox.send(address, record)

    def stop(self, code: ExitCode = ExitCode.OK) -> None:
        """End the loop after the current step; then ``on_stop`` runs.

        The first code asked for is kept. Outside a running loop this only records the
        request, which is how signal handling is tested without a loop.
        """
        if self._stop_code is None:
            self._stop_code = ExitCode(code)
        if self._loop is not None:
            self._loop.waker.wake()  # in case it is called from another thread

    def _running(self, *, or_ended: bool = False) -> Loop:
        loop = self._loop
        if loop is None or (loop.ended and not or_ended):
            raise RuntimeError(
                f"{type(self).__name__} is not running: the runtime's services are there "
                "from on_start to on_stop (run the actor with run_actor or spawn)"
            )
        return loop


def run_actor(
    actor: Actor,
    address: str,
    *,
    signals: Sequence[int] = (signal.SIGTERM,),
    parent_pid: int | None = None,
) -> ExitCode:
    """Run ``actor`` in this process until it stops; return its exit code.

    Binds a PULL mailbox at ``address`` and installs handlers for ``signals`` that only
    record the signal and wake the loop (which then calls ``on_signal``); signal handlers
    need the main thread, so pass ``signals=()`` to run elsewhere. Then runs ``on_start``,
    and the loop: wait on the mailbox and a wake-up pipe until the next timer, decode frames
    (bad ones are counted in ``rejects``), dispatch them to ``receive``, run due timers and
    queued callbacks. Once stopped it runs ``on_stop``, closes the sockets, destroys the
    context and restores the previous signal handlers.

    ``parent_pid``, when given, is checked every second: if this process's parent changes,
    the actor stops with :attr:`ExitCode.ORPHANED`. A mailbox that cannot be bound gives
    :attr:`ExitCode.CONFIG`.
    """
    if actor._loop is not None and not actor._loop.ended:
        raise RuntimeError(f"{type(actor).__name__} is already running at {actor._loop.address}")
    if actor._loop is not None:
        actor._stop_code = None  # a second run; a stop asked for before the first one holds
    loop = Loop(actor, address)
    actor._loop = loop
    return loop.run(signals, parent_pid)
