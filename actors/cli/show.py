"""How the CLI shows things: consoles, byte progress bars, and numbers as people read them."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from batchfarm.actors.cli.client import Advance

#: Width of tables written to a pipe or file (a terminal's own width is used when there is one).
PIPE_WIDTH = 160
#: What a missing value shows as.
NONE = "-"


def stdout_console() -> Console:
    """A console on stdout; wide enough not to fold tables when stdout is not a terminal."""
    probe = Console()
    if probe.is_terminal or "COLUMNS" in os.environ:
        return probe
    return Console(width=PIPE_WIDTH)


def stderr_console() -> Console:
    """A console on stderr, for progress and notes that must not mix with stdout's data."""
    return Console(stderr=True)


@contextmanager
def byte_progress(label: str, total: int) -> Iterator[Advance]:
    """A progress bar of ``total`` bytes on stderr when it is a terminal; quiet otherwise.

    Yields ``advance(bytes)``.
    """
    console = stderr_console()
    if not console.is_terminal:
        yield lambda n: None
        return
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task(label, total=total)
        yield lambda n: progress.advance(task, n)


def duration(seconds: float | None) -> str:
    """``850 ms``, ``12.3 s``, ``4m05s``, ``2h03m``, ``3d04h``; ``-`` for None."""
    if seconds is None:
        return NONE
    s = float(seconds)
    if s < 1:
        return f"{s * 1000:.0f} ms"
    if s < 60:
        return f"{s:.1f} s"
    whole = int(s)
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    if whole < 86_400:
        return f"{whole // 3600}h{whole % 3600 // 60:02d}m"
    return f"{whole // 86_400}d{whole % 86_400 // 3600:02d}h"


def size(count: float | None) -> str:
    """Bytes as ``512 B``, ``1.5 MB``, ``2.0 GB`` (powers of 1000); ``-`` for None."""
    if count is None:
        return NONE
    value = float(count)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    raise AssertionError("unreachable")


def rate(per_s: float | None) -> str:
    """Tasks per second (or per minute when slow); ``-`` for None."""
    if per_s is None:
        return NONE
    if per_s < 0.1:
        return f"{per_s * 60:.1f}/min"
    return f"{per_s:.1f}/s"


def dollars(amount: float | None) -> str:
    """``$12.34``, or ``$0.0125`` under a dollar's cent; ``-`` for None."""
    if amount is None:
        return NONE
    value = float(amount)
    return f"${value:,.2f}" if value == 0 or value >= 0.01 else f"${value:.4f}"


def percent(fraction: float | None) -> str:
    """``45%``; ``-`` for None."""
    return NONE if fraction is None else f"{fraction * 100:.0f}%"


def when(epoch: float | None, now: float | None = None) -> str:
    """``2026-12-03 10:10:10Z (12 s ago)``; ``-`` for None."""
    if epoch is None:
        return NONE
    stamp = datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%SZ")
    delta = (time.time() if now is None else now) - epoch
    relative = f"{duration(delta)} ago" if delta >= 0 else f"in {duration(-delta)}"
    return f"{stamp} ({relative})"


def age(epoch: float | None, now: float | None = None) -> str:
    """How long ago ``epoch`` was: ``3.2 s``; ``-`` for None."""
    if epoch is None:
        return NONE
    return duration(max(0.0, (time.time() if now is None else now) - epoch))
