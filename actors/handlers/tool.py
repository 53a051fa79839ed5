"""Run an external tool for a handler: no shell, no stdin, killable as a group, cancellable.

:func:`run` is what ``TaskContext.run_tool`` does. The tool runs in its own session (so its
whole process group can be killed) and, on Linux, with ``PR_SET_PDEATHSIG = SIGKILL``, so it
dies with the process that started it instead of running on as an orphan when a worker is
killed.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import resource
import selectors
import signal
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from batchfarm.actors.errors import TaskCancelled, TaskError

#: How often cancellation is polled while the tool runs, in seconds.
POLL_S = 0.05
#: What a tail keeps of a stream: the last lines, and at most this many characters of them.
TAIL_LINES = 30
TAIL_CHARS = 4096
#: A line longer than this is cut: a tool that never ends a line cannot grow our memory.
MAX_LINE_BYTES = 64 * 1024
#: Seconds between the soft CPU limit's SIGXCPU and the hard limit's SIGKILL.
CPU_GRACE_S = 1
#: After the tool exits, how long to wait for its pipes to close (a stray that escaped the
#: group could hold them open for ever).
DRAIN_S = 1.0

_PR_SET_PDEATHSIG = 1
_LINUX = sys.platform.startswith("linux")


@dataclass(frozen=True)
class Limits:
    """Operating-system limits on a tool's process (None: no limit).

    Set with ``setrlimit`` in the child before it runs the tool, so the tool cannot raise
    them: CPU seconds (SIGXCPU, then SIGKILL a CPU second later), address space, and the
    size of any file it writes (SIGXFSZ).
    """

    cpu_s: int | None = None
    memory_bytes: int | None = None
    output_bytes: int | None = None

    def set(self) -> None:
        """Apply the limits to the calling process (the child, between fork and exec)."""
        if self.cpu_s is not None:
            resource.setrlimit(resource.RLIMIT_CPU, (self.cpu_s, self.cpu_s + CPU_GRACE_S))
        if self.memory_bytes is not None:
            resource.setrlimit(resource.RLIMIT_AS, (self.memory_bytes, self.memory_bytes))
        if self.output_bytes is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (self.output_bytes, self.output_bytes))

    def explain(self, returncode: int, cpu_used_s: float) -> str | None:
        """Which limit a tool that exited with ``returncode`` after ``cpu_used_s`` went over.

        None when it was not a limit. ffmpeg catches SIGXCPU and exits with a code of its
        own, so the CPU time used is what tells.
        """
        if returncode == -signal.SIGXCPU or (self.cpu_s is not None and cpu_used_s >= self.cpu_s):
            return f"it used its CPU time limit ({self.cpu_s} s)"
        if returncode == -signal.SIGXFSZ:
            return f"it tried to write a file above its size limit ({self.output_bytes} bytes)"
        return None


@dataclass
class ToolResult:
    """How a tool run that succeeded ended."""

    returncode: int
    stdout_tail: str
    stderr_tail: str
    elapsed_s: float


class Tail:
    """The last lines of a stream, split as they arrive, with a callback per complete line."""

    def __init__(self, on_line: Callable[[str], None] | None = None) -> None:
        self._lines: deque[str] = deque(maxlen=TAIL_LINES)
        self._partial = bytearray()
        self._on_line = on_line

    def feed(self, data: bytes) -> None:
        """Add bytes read from the stream."""
        self._partial += data
        while True:
            end = self._partial.find(b"\n")
            if end < 0:
                break
            self._line(bytes(self._partial[:end]))
            del self._partial[: end + 1]
        while len(self._partial) > MAX_LINE_BYTES:
            self._line(bytes(self._partial[:MAX_LINE_BYTES]))
            del self._partial[:MAX_LINE_BYTES]

    def close(self) -> None:
        """The stream ended: a last line without a newline still counts."""
        if self._partial:
            self._line(bytes(self._partial))
            del self._partial[:]

    def text(self) -> str:
        """The tail: the last lines, cut to the last :data:`TAIL_CHARS` characters."""
        return "\n".join(self._lines)[-TAIL_CHARS:]

    def last_line(self) -> str:
        """The last non-blank line, or ""."""
        return next((line.strip() for line in reversed(self._lines) if line.strip()), "")

    def _line(self, raw: bytes) -> None:
        line = raw.decode("utf-8", errors="replace").rstrip("\r")
        self._lines.append(line)
        if self._on_line is not None:
            self._on_line(line)


def _die_with_parent(limits: Limits | None = None) -> Callable[[], None] | None:
    """A preexec_fn that makes the child get SIGKILL when its parent dies (Linux only).

    It also applies ``limits`` to the child.
    """
    if not _LINUX:
        return limits.set if limits is not None else None
    # Resolved in the parent: the child, between fork and exec, should do as little as it can.
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    parent = os.getpid()

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        # The parent may have died before prctl: then no signal would ever come.
        if os.getppid() != parent:
            os.kill(os.getpid(), signal.SIGKILL)
        if limits is not None:
            limits.set()

    return preexec


def run(
    argv: Sequence[str],
    *,
    cancelled: Callable[[], bool],
    cwd: Path | None = None,
    on_stdout_line: Callable[[str], None] | None = None,
    permanent_if: Callable[[str], bool] | None = None,
    limits: Limits | None = None,
) -> ToolResult:
    """Run ``argv`` to its end and return how it ended; see ``TaskContext.run_tool``.

    ``limits`` are set on the child; a tool killed for going over one fails permanently
    with a message saying which (the same input would go over it again).

    The death signal is tied to the *thread* that starts the tool, which is the one that waits
    for it here, so it outlives the tool.
    """
    args = [os.fspath(a) for a in argv]
    if not args:
        raise TaskError("run_tool: argv is empty, expected a program and its arguments")
    name = Path(args[0]).name
    started = time.monotonic()
    try:
        proc = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=cwd,
            start_new_session=True,
            preexec_fn=_die_with_parent(limits),  # noqa: PLW1509 - the point is the child's setup
        )
    except FileNotFoundError as exc:
        # Popen reports a missing working folder as a FileNotFoundError too, naming it.
        if cwd is not None and exc.filename is not None and str(exc.filename) == str(cwd):
            raise TaskError(f"{name}: cannot run in {cwd}: no such folder") from exc
        raise TaskError(f"{name}: no such program: {args[0]}", permanent=True) from exc
    except PermissionError as exc:
        raise TaskError(f"{name}: not executable: {args[0]}", permanent=True) from exc

    out, err = Tail(on_stdout_line), Tail()
    reaped = False
    try:
        _pump(proc, out, err, cancelled)
        rc, cpu_used = _reap(proc)
        reaped = True
    finally:
        if not reaped:
            _kill_group(proc)
            proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
    elapsed = time.monotonic() - started
    if rc != 0:
        last = err.last_line()
        tail = err.text()
        over = limits.explain(rc, cpu_used) if limits is not None else None
        if over is not None:
            raise TaskError(f"{name} was stopped: {over}", stderr_tail=tail, permanent=True)
        raise TaskError(
            f"{name} exited with code {rc}" + (f": {last}" if last else ""),
            stderr_tail=tail,
            permanent=permanent_if(tail) if permanent_if is not None else False,
        )
    return ToolResult(rc, out.text(), err.text(), elapsed)


def _pump(
    proc: subprocess.Popen[bytes], out: Tail, err: Tail, cancelled: Callable[[], bool]
) -> None:
    """Read both pipes until the tool has exited and they are drained, or raise if cancelled.

    On return the tool has exited but is not yet reaped, and its group has been killed: while
    the leader is a zombie its pid, and so the group id, cannot be reused by another process.
    """
    assert proc.stdout is not None
    assert proc.stderr is not None
    tails = {proc.stdout.fileno(): out, proc.stderr.fileno(): err}
    with selectors.DefaultSelector() as selector:
        for fd in tails:
            os.set_blocking(fd, False)
            selector.register(fd, selectors.EVENT_READ)
        drain_until: float | None = None
        while selector.get_map():
            if cancelled():
                raise TaskCancelled("cancelled")
            if drain_until is None and _exited(proc.pid):
                # Whatever is left in the group is a stray: it must not outlive the tool.
                _kill_group(proc)
                drain_until = time.monotonic() + DRAIN_S
            if drain_until is not None and time.monotonic() > drain_until:
                break
            for key, _ in selector.select(POLL_S):
                try:
                    data = os.read(key.fd, 65536)
                except BlockingIOError:
                    continue
                if data:
                    tails[key.fd].feed(data)
                else:
                    selector.unregister(key.fd)
                    tails[key.fd].close()
    for tail in tails.values():
        tail.close()
    while not _exited(proc.pid):
        if cancelled():
            raise TaskCancelled("cancelled")
        time.sleep(POLL_S / 5)
    _kill_group(proc)


def _reap(proc: subprocess.Popen[bytes]) -> tuple[int, float]:
    """Wait for the tool; return its exit code (``-signal`` if killed) and CPU seconds used."""
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, usage.ru_utime + usage.ru_stime


def _exited(pid: int) -> bool:
    """True once the process has exited; it stays a zombie (WNOWAIT) until waited for."""
    result = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    return result is not None


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    # The leader may already be reaped and its group empty: nothing left to kill.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
