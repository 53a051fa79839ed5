"""CPU planning and process inspection for the node supervisor: every psutil call lives here.

The supervisor runs one worker per core it may use, each pinned to its own core, so a
worker's caches stay warm and workers never fight over a core. The cores it may use are
those of its own affinity, so ``taskset``, cgroup cpusets and container CPU limits set by
affinity are honoured without configuration.
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import psutil

from batchfarm.actors.errors import BatchfarmError

__all__ = [
    "CpuError",
    "ProcessStats",
    "StatsSampler",
    "affinity",
    "available_cpus",
    "descendants",
    "kill_tree",
    "pin",
    "pin_plan",
    "worker_count",
]

log = logging.getLogger(__name__)


class CpuError(BatchfarmError):
    """A process could not be pinned or inspected."""


def available_cpus() -> list[int]:
    """The cores this process may run on, in order (its affinity: honours taskset/cpusets)."""
    return sorted(psutil.Process().cpu_affinity())


def worker_count(setting: int | Literal["auto"], cpus: Sequence[int]) -> int:
    """How many workers to run: ``"auto"`` is one per core in ``cpus``."""
    if setting == "auto":
        if not cpus:
            raise ValueError('workers = "auto" but no cores are available to this process')
        return len(cpus)
    if type(setting) is not int or setting < 1:
        raise ValueError(f'workers is {setting!r}, expected "auto" or a whole number from 1')
    return setting


def pin_plan(workers: int, cpus: Sequence[int]) -> list[list[int]]:
    """Each worker's cores: worker ``i`` gets ``cpus[i % len(cpus)]`` alone.

    With more workers than cores the workers go round-robin, so the counts per core differ
    by at most one.
    """
    if type(workers) is not int or workers < 0:
        raise ValueError(f"workers is {workers!r}, expected a whole number from 0")
    cores = list(dict.fromkeys(cpus))  # de-duplicated, order kept
    if not cores:
        raise ValueError("no cores to plan over: cpus is empty")
    return [[cores[i % len(cores)]] for i in range(workers)]


def pin(pid: int, cpus: Sequence[int]) -> None:
    """Restrict process ``pid`` to ``cpus``; CpuError naming both if that fails."""
    wanted = list(cpus)
    if not wanted:
        raise CpuError(f"cannot pin process {pid} to no cores: cpus is empty")
    try:
        psutil.Process(pid).cpu_affinity(wanted)
    except psutil.NoSuchProcess:
        raise CpuError(f"cannot pin process {pid} to cores {wanted}: no such process") from None
    except (psutil.AccessDenied, OSError, ValueError) as e:
        raise CpuError(f"cannot pin process {pid} to cores {wanted}: {e}") from None


def affinity(pid: int) -> list[int]:
    """The cores process ``pid`` may run on, in order."""
    try:
        return sorted(psutil.Process(pid).cpu_affinity())
    except psutil.Error as e:
        raise CpuError(f"cannot read the affinity of process {pid}: {e}") from None


@dataclass(frozen=True)
class ProcessStats:
    """One sample of a process's resource use."""

    #: CPU use since the previous sample of the same process, 100 per busy core.
    cpu_percent: float
    #: Resident memory, in bytes.
    rss_bytes: int


class StatsSampler:
    """Samples processes' CPU and memory, keeping one psutil handle per process.

    A process's CPU figure is its use between two samples, so the first sample of a
    process reads 0.0; sample at a steady interval (the heartbeat) for meaningful figures.
    """

    def __init__(self) -> None:
        self._procs: dict[int, psutil.Process] = {}

    def sample(self, pid: int) -> ProcessStats | None:
        """The stats of process ``pid``, or None if it is gone (or a zombie, or not ours)."""
        proc = self._procs.get(pid)
        if proc is None:
            try:
                proc = self._procs[pid] = psutil.Process(pid)
            except psutil.Error:
                return None
        try:
            with proc.oneshot():
                if proc.status() == psutil.STATUS_ZOMBIE:
                    raise psutil.ZombieProcess(pid)
                # psutil.Process checks the pid still names the process it was made for.
                return ProcessStats(proc.cpu_percent(None), proc.memory_info().rss)
        except psutil.Error:
            # A later process with the same pid gets a fresh handle.
            self._procs.pop(pid, None)
            return None

    def forget(self, pid: int) -> None:
        """Drop the handle of a process the caller knows is gone."""
        self._procs.pop(pid, None)


def descendants(pid: int) -> list[int]:
    """The pids of ``pid``'s children, grandchildren and so on (empty if it is gone)."""
    try:
        return [p.pid for p in psutil.Process(pid).children(recursive=True)]
    except psutil.Error:
        return []


def kill_tree(pid: int, sig: int = signal.SIGKILL) -> None:
    """Send ``sig`` to process ``pid`` and all its descendants, skipping any already gone.

    The tree is gathered first, because a killed parent's children are re-parented and no
    longer found under it; then the parent is signalled before its descendants, so it
    cannot replace a child it sees die.
    """
    try:
        root = psutil.Process(pid)
        tree = [root, *root.children(recursive=True)]
    except psutil.Error:
        return
    for proc in tree:
        try:
            # Checks the pid still names the process gathered, never a newcomer.
            proc.send_signal(sig)
        except psutil.NoSuchProcess:
            pass
        except psutil.AccessDenied as e:
            log.warning("cannot signal process %d: %s", proc.pid, e)


def machine_cpu_percent() -> float:
    """The whole machine's CPU use since the last call (0 to 100, all cores together)."""
    return float(psutil.cpu_percent(interval=None))


def pin_tree(pid: int, cpus: Sequence[int]) -> int:
    """Restrict every thread of ``pid`` and of its descendants to ``cpus``; return how many.

    Affinity belongs to threads, and a tool that already runs (ffmpeg) keeps the affinity its
    threads were started with, so each thread is set. Threads and processes that end on the
    way are skipped.
    """
    wanted = list(cpus)
    done = 0
    try:
        root = psutil.Process(pid)
        tree = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0
    for proc in tree:
        try:
            threads = [t.id for t in proc.threads()]
        except psutil.Error:
            continue
        for tid in threads:
            try:
                os.sched_setaffinity(tid, wanted)
                done += 1
            except OSError:
                continue  # the thread ended
    return done
