"""Actors in child processes: spawn one, talk to its mailbox, stop it, reap it.

Children are started with multiprocessing's *spawn* method, never fork: the parent has
threads and ZeroMQ sockets, and neither survives a fork. A child builds its actor by calling
the factory it was given (so only the factory and its arguments cross the process boundary,
pickled) and creates its own ZeroMQ context.

A child dies with its parent, even when the parent is killed with SIGKILL: it asks the kernel
for SIGKILL when its parent goes (``PR_SET_PDEATHSIG``) and, as a fallback, checks every
second that its parent is still there. Linux sends the death signal when the *thread* that
started the child ends, so spawn from a thread that lives as long as the children (the
supervisor's main thread).

Pinning: ``spawn(..., cpus=[n])`` pins the child with ``os.sched_setaffinity`` before it
builds its actor, so no thread of the actor ever runs elsewhere (the runtime does not import
the supervisor, whose ``cpus`` module plans pins and can re-pin a running child).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import multiprocessing
import os
import re
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import zmq

from batchfarm.actors.codec import encode_frame
from batchfarm.actors.errors import ConfigError
from batchfarm.actors.messages import Record
from batchfarm.actors.runtime.actor import Actor, run_actor
from batchfarm.actors.runtime.exits import ExitCode
from batchfarm.actors.runtime.outbox import LINGER_MS, connect_push, push

__all__ = ["ActorProcess", "mailbox_address", "spawn"]

log = logging.getLogger(__name__)

_SPAWN = multiprocessing.get_context("spawn")
#: Longest ipc:// path: a Unix socket address (sun_path) holds 107 bytes and a NUL.
IPC_PATH_MAX = zmq.IPC_PATH_MAX_LEN or 107
#: Actor names: they become file names and process names.
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_PR_SET_PDEATHSIG = 1


def mailbox_address(run_dir: Path, name: str) -> str:
    """The mailbox endpoint of actor ``name``: ``ipc://<run_dir>/<name>.sock``.

    ``run_dir`` is made absolute, so the address means the same in every process. Raises
    ValueError naming the name or the path when the name is not a plain file name or the
    path is too long for a Unix socket.
    """
    _check_name(name)
    path = Path(run_dir).absolute() / f"{name}.sock"
    size = len(os.fsencode(path))
    if size > IPC_PATH_MAX:
        raise ValueError(
            f"mailbox path {path} is {size} bytes; a Unix socket path holds at most "
            f"{IPC_PATH_MAX}: use a shorter run directory"
        )
    return f"ipc://{path}"


def _check_name(name: str) -> None:
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise ValueError(
            f"actor name {name!r}: expected 1 to 64 letters, digits, '_', '.' or '-' "
            "starting with a letter or digit"
        )


class ActorProcess:
    """The parent's handle on an actor running in a child process."""

    def __init__(
        self, process: multiprocessing.process.BaseProcess, name: str, address: str
    ) -> None:
        self.name = name
        self.address = address
        #: Frames :meth:`send` dropped because the child's mailbox queue was full.
        self.dropped = 0
        self._process = process
        pid = process.pid
        assert pid is not None  # started
        self._pid = pid
        self._exitcode: int | None = None
        self._socket: zmq.Socket[bytes] | None = None
        self._lock = threading.Lock()  # one parent-side socket, possibly shared by threads
        self._closed = False

    def __repr__(self) -> str:
        return f"<ActorProcess {self.name} pid={self._pid} {self.address}>"

    @property
    def pid(self) -> int:
        """The child's process id."""
        return self._pid

    @property
    def exitcode(self) -> int | None:
        """The child's exit code once it has ended (negative: the signal that ended it)."""
        if self._closed:
            return self._exitcode
        return self._process.exitcode

    def is_alive(self) -> bool:
        """True until the child has ended."""
        return not self._closed and self._process.is_alive()

    def send(self, record: Record) -> None:
        """Push ``record`` to the child's mailbox without blocking.

        Frames sent before the child has bound its mailbox wait in the parent's queue; when
        that queue is full the frame is dropped and counted in :attr:`dropped`.
        """
        frame = encode_frame(record)
        with self._lock:
            if self._closed:
                raise RuntimeError(f"{self!r} is closed")
            if self._socket is None:
                # One context per parent process; pyzmq remakes it after a fork.
                self._socket = connect_push(zmq.Context.instance(), self.address)
            if not push(self._socket, frame):
                self.dropped += 1

    def terminate(self) -> None:
        """Ask the child to stop: SIGTERM (its actor's on_signal decides what that means)."""
        self._signal(signal.SIGTERM)

    def kill(self) -> None:
        """Kill the child at once: SIGKILL."""
        self._signal(signal.SIGKILL)

    def _signal(self, signum: int) -> None:
        if self._closed or self._process.exitcode is not None:
            return  # reaped: the pid may belong to another process by now
        with contextlib.suppress(ProcessLookupError):
            os.kill(self._pid, signum)

    def join(self, timeout: float | None = None) -> int | None:
        """Wait up to ``timeout`` seconds (None: for ever) for the child; its exit code."""
        if not self._closed:
            self._process.join(timeout)
        return self.exitcode

    def close(self) -> None:
        """Release the parent's socket and, once the child has ended, its process handle.

        Frames already sent still get a moment to reach the child.
        """
        with self._lock:
            if self._socket is not None:
                # The parent's context lives on, so frames just sent are still delivered.
                self._socket.close(linger=LINGER_MS)
                self._socket = None
            if self._closed or self._process.is_alive():
                return
            self._exitcode = self._process.exitcode
            self._process.close()
            self._closed = True


def spawn(
    factory: Callable[..., Actor],
    *args: Any,
    address: str,
    name: str,
    cpus: Sequence[int] | None = None,
) -> ActorProcess:
    """Start a child process that runs ``factory(*args)`` as an actor at ``address``.

    ``factory`` and ``args`` must be picklable (module-level callables; settings
    dataclasses are). In the child: SIGINT is ignored (Ctrl-C in a terminal goes to the
    whole process group; the supervisor decides how its children stop), the child asks to
    die with its parent, pins itself to ``cpus`` when given (before the actor is built, so
    every thread it starts inherits the pinning), builds the actor, runs it with SIGTERM
    handled, and exits with its :class:`ExitCode`. A factory that raises ConfigError exits
    with CONFIG, any other exception with FAILED.
    """
    _check_name(name)
    pinned = None if cpus is None else _check_cpus(cpus)
    process = _SPAWN.Process(
        target=_child_main,
        args=(factory, args, address, pinned, os.getpid()),
        name=name,
        # A parent that exits normally stops its children (SIGTERM) rather than waiting.
        daemon=True,
    )
    with _sigint_blocked():
        process.start()
    return ActorProcess(process, name, address)


def _check_cpus(cpus: Sequence[int]) -> list[int]:
    allowed = os.sched_getaffinity(0)
    chosen = list(cpus)
    if not chosen or any(type(c) is not int or c not in allowed for c in chosen):
        raise ValueError(f"cpus {chosen!r}: expected a non-empty list from {sorted(allowed)}")
    return chosen


@contextlib.contextmanager
def _sigint_blocked() -> Iterator[None]:
    """Block SIGINT in this thread while starting a child, which inherits the mask.

    So a Ctrl-C during the child's start-up waits until the child ignores SIGINT, and is
    delivered to the parent once this returns, instead of killing a half-started child.
    """
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _die_with_parent() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        log.warning("prctl(PR_SET_PDEATHSIG) failed: %s", os.strerror(ctypes.get_errno()))


def _child_main(
    factory: Callable[..., Actor],
    args: tuple[Any, ...],
    address: str,
    cpus: list[int] | None,
    parent_pid: int,
) -> None:
    """The child's entry point (runs in the spawned process)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    _die_with_parent()
    # So this actor may spawn actors of its own (a node supervisor run as a child): they
    # die with it through the death signal, which daemon status would not give them anyway.
    multiprocessing.current_process().daemon = False
    if os.getppid() != parent_pid:  # the parent died before the death signal was armed
        sys.exit(ExitCode.ORPHANED)
    if cpus is not None:
        os.sched_setaffinity(0, cpus)
    try:
        actor = factory(*args)
    except ConfigError:
        log.exception("bad configuration for actor %s", address)
        sys.exit(ExitCode.CONFIG)
    except Exception:
        log.exception("could not build the actor for %s", address)
        sys.exit(ExitCode.FAILED)
    sys.exit(run_actor(actor, address, parent_pid=parent_pid))
