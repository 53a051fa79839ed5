"""A self-pipe that wakes the actor loop from other threads and from signals."""

from __future__ import annotations

import contextlib
import os
import threading


class Waker:
    """A non-blocking pipe the loop polls: a byte written to it ends the loop's wait.

    Writing one byte is safe from any thread, and the write end doubles as the
    interpreter's signal wake-up fd (:func:`signal.set_wakeup_fd`), so a signal wakes the
    loop even when the kernel delivers it to one of libzmq's I/O threads.
    """

    def __init__(self) -> None:
        self._read, self._write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        # Re-entrant: a signal handler may interrupt a wake() on the same (main) thread.
        self._lock = threading.RLock()
        self._closed = False

    @property
    def read_fd(self) -> int:
        """The end the loop polls."""
        return self._read

    @property
    def write_fd(self) -> int:
        """The end wake() writes to."""
        return self._write

    def wake(self) -> None:
        """Make the loop's next (or current) poll return at once; a no-op once closed."""
        with self._lock:
            if self._closed:
                return  # the fd number may already belong to another file
            # A full pipe already holds a wake-up: nothing is lost by dropping this one.
            with contextlib.suppress(BlockingIOError):
                os.write(self._write, b"\0")

    def drain(self) -> None:
        """Consume pending wake-ups (the loop handles everything queued when it wakes)."""
        with contextlib.suppress(BlockingIOError):
            while os.read(self._read, 4096):
                pass

    def close(self) -> None:
        """Close both ends; later wake() calls do nothing."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            os.close(self._read)
            os.close(self._write)
