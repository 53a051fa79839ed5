"""Named exit codes for actor processes, and how to say what an exit code means.

A supervisor decides what to do with a dead actor from its exit code alone (restart it, give
up, stop the node), so every way an actor ends has its own code. Codes follow Dramatiq's CLI
and ``sysexits.h`` where one exists.
"""

from __future__ import annotations

import signal
from enum import IntEnum


class ExitCode(IntEnum):
    """How an actor process ended."""

    #: A clean stop.
    OK = 0
    #: ``on_start`` or the loop raised; ``on_failure`` was called.
    FAILED = 1
    #: A bad command line (CLI use).
    USAGE = 2
    #: A task would not stop when told; the process exits so that it can be restarted.
    HUNG = 3
    #: The parent process died.
    ORPHANED = 4
    #: Bad configuration (``EX_CONFIG`` in ``sysexits.h``).
    CONFIG = 78


_WORDS = {
    ExitCode.OK: "ok",
    ExitCode.FAILED: "failed",
    ExitCode.USAGE: "bad command line",
    ExitCode.HUNG: "hung (a task would not stop)",
    ExitCode.ORPHANED: "orphaned (its parent died)",
    ExitCode.CONFIG: "bad configuration",
}


def describe_exit(code: int | None) -> str:
    """Say what an exit code means: ``"ok"``, ``"failed"``, ``"killed by SIGKILL"``, ...

    ``code`` is as :mod:`multiprocessing` reports it: None while the process runs, a
    negative signal number when a signal ended it.
    """
    if code is None:
        return "still running"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    try:
        return _WORDS[ExitCode(code)]
    except ValueError:
        return f"exit status {code}"
