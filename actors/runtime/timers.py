"""Timers for the actor loop: one heap, ordered by due time, then by creation."""

from __future__ import annotations

import heapq
import itertools
import math
import time
from collections.abc import Callable


class Timer:
    """A callback the actor loop runs once after a delay, or every interval until cancelled."""

    __slots__ = ("_active", "_callback", "_due", "_interval", "_seq")

    def __init__(
        self, due: float, interval: float | None, callback: Callable[[], None], seq: int
    ) -> None:
        self._due = due
        self._interval = interval
        self._callback = callback
        self._seq = seq
        self._active = True

    def cancel(self) -> None:
        """Stop the timer; it does not fire again (cancelling twice is harmless)."""
        self._active = False

    @property
    def active(self) -> bool:
        """True while the timer may still fire: not cancelled, and not a one-shot that fired."""
        return self._active

    def __lt__(self, other: Timer) -> bool:
        return (self._due, self._seq) < (other._due, other._seq)


def check_delay(name: str, value: float, *, positive: bool) -> float:
    """Check a timer's delay or interval, naming it and what was expected when it is bad."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{name} is {value!r}, expected a finite number of seconds")
    if value < 0 or (positive and value == 0):
        bound = "more than 0" if positive else "0 or more"
        raise ValueError(f"{name} is {value!r}, expected {bound} seconds")
    return float(value)


class TimerQueue:
    """The loop's pending timers, on the monotonic clock."""

    def __init__(self) -> None:
        self._heap: list[Timer] = []
        self._seq = itertools.count()

    def add(self, delay_s: float, interval_s: float | None, callback: Callable[[], None]) -> Timer:
        """Schedule ``callback`` in ``delay_s`` seconds, then every ``interval_s`` if given."""
        timer = Timer(time.monotonic() + delay_s, interval_s, callback, next(self._seq))
        heapq.heappush(self._heap, timer)
        return timer

    def seconds_to_next(self) -> float | None:
        """Seconds until the earliest live timer is due (0 if overdue), or None if none."""
        while self._heap and not self._heap[0].active:
            heapq.heappop(self._heap)
        if not self._heap:
            return None
        return max(0.0, self._heap[0]._due - time.monotonic())

    def run_due(self, step: Callable[[Callable[[], None]], bool]) -> None:
        """Run the callbacks due now through ``step``, in order; stop when it returns False.

        Only timers due when the call starts run, so a repeating timer with a tiny interval
        cannot keep the loop here; a timer cancelled by an earlier callback does not run.
        """
        now = time.monotonic()
        due: list[Timer] = []
        while self._heap and self._heap[0]._due <= now:
            due.append(heapq.heappop(self._heap))
        for timer in due:
            if not timer.active:
                continue
            if timer._interval is None:
                timer._active = False
            else:
                # A loop that fell behind skips the missed ticks instead of firing a burst.
                timer._due += timer._interval
                if timer._due <= now:
                    timer._due = now + timer._interval
                timer._seq = next(self._seq)
                heapq.heappush(self._heap, timer)
            if not step(timer._callback):
                return
