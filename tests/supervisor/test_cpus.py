"""CPU planning and process inspection, on real processes."""

from __future__ import annotations

import collections
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import psutil
import pytest

from batchfarm.supervisor.cpus import (
    CpuError,
    StatsSampler,
    affinity,
    available_cpus,
    descendants,
    kill_tree,
    pin,
    pin_plan,
    worker_count,
)


@contextmanager
def python(code: str) -> Iterator[subprocess.Popen[str]]:
    """A child interpreter running ``code``; killed (if still running) and reaped at the end."""
    with subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True) as p:
        try:
            yield p
        finally:
            if p.poll() is None:
                p.kill()


def dead(pid: int) -> bool:
    """Gone, or a zombie (dead, waiting for a reaper: in a container PID 1 may not reap)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_available_cpus_honours_taskset():
    code = (
        "import json; from batchfarm.supervisor.cpus import available_cpus, worker_count;"
        "cpus = available_cpus(); print(json.dumps([cpus, worker_count('auto', cpus)]))"
    )
    out = subprocess.run(
        ["taskset", "-c", "0", sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert json.loads(out) == [[0], 1]


def test_available_cpus_is_this_process_affinity():
    assert available_cpus() == sorted(os.sched_getaffinity(0))


def test_worker_count():
    assert worker_count("auto", [0, 1, 2]) == 3
    assert worker_count(5, [0, 1]) == 5  # oversubscribing is the operator's call


@pytest.mark.parametrize("bad", [0, -1, "many", True, 2.0])
def test_a_bad_worker_count_is_refused_by_value(bad):
    with pytest.raises(ValueError, match=rf"workers is {bad!r}, expected \"auto\""):
        worker_count(bad, [0, 1])


def test_auto_with_no_cores_is_refused():
    with pytest.raises(ValueError, match="no cores"):
        worker_count("auto", [])


def test_pin_plan_gives_each_worker_its_own_core():
    assert pin_plan(2, [0, 1]) == [[0], [1]]
    assert pin_plan(1, [2, 3]) == [[2]]
    assert pin_plan(0, [0]) == []


def test_pin_plan_spreads_more_workers_than_cores_evenly():
    plan = pin_plan(5, [0, 1])
    assert all(len(cores) == 1 for cores in plan)
    assert collections.Counter(c for cores in plan for c in cores) == {0: 3, 1: 2}
    per_core = collections.Counter(c for cores in pin_plan(7, [4, 5, 6, 4]) for c in cores)
    assert per_core == {4: 3, 5: 2, 6: 2}  # a repeated core counts once


def test_pin_plan_refuses_bad_input():
    with pytest.raises(ValueError, match="cpus is empty"):
        pin_plan(2, [])
    with pytest.raises(ValueError, match="workers is -1"):
        pin_plan(-1, [0])


def test_pin_then_affinity_on_a_real_child():
    cores = available_cpus()
    with python("import time; time.sleep(60)") as child:
        for core in (cores[0], cores[-1]):
            pin(child.pid, [core])
            assert affinity(child.pid) == [core]
        pin(child.pid, cores)
        assert affinity(child.pid) == cores


def test_pin_failures_name_the_process_and_cores():
    with python("import time; time.sleep(60)") as child:
        with pytest.raises(CpuError, match=rf"cannot pin process {child.pid} to cores \[4096\]"):
            pin(child.pid, [4096])
        with pytest.raises(CpuError, match="no cores"):
            pin(child.pid, [])
        child.kill()
        child.wait()
        with pytest.raises(CpuError, match=rf"process {child.pid} .*no such process"):
            pin(child.pid, [0])
        with pytest.raises(CpuError, match=rf"affinity of process {child.pid}"):
            affinity(child.pid)


def test_kill_tree_kills_grandchildren():
    code = (
        "import subprocess, sys, time;"
        "g = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']);"
        "print(g.pid, flush=True); time.sleep(60)"
    )
    with python(code) as child:
        assert child.stdout is not None
        grandchild = int(child.stdout.readline())
        assert descendants(child.pid) == [grandchild]
        kill_tree(child.pid)
        assert child.wait(5) == -signal.SIGKILL
        deadline = time.monotonic() + 5
        while not dead(grandchild):
            assert time.monotonic() < deadline, "the grandchild survived"
            time.sleep(0.01)
        assert descendants(child.pid) == []
        kill_tree(child.pid)  # already gone: nothing to do, no error


def test_kill_tree_sends_the_signal_asked_for():
    with python("import time; time.sleep(60)") as child:
        kill_tree(child.pid, signal.SIGTERM)
        assert child.wait(5) == -signal.SIGTERM


# Two threads hashing (hashlib drops the GIL): busy enough to pass 50 % of a core even when
# other processes crowd this 2-core machine.
BUSY = """
import hashlib, threading
data = bytes(1 << 20)
def spin():
    while True:
        hashlib.sha256(data).digest()
for _ in range(2):
    threading.Thread(target=spin, daemon=True).start()
print("spinning", flush=True)
threading.Event().wait()
"""


def test_stats_sampler_sees_a_busy_child():
    sampler = StatsSampler()
    with python(BUSY) as child:
        assert child.stdout is not None
        assert child.stdout.readline() == "spinning\n"  # past the interpreter's start-up
        first = sampler.sample(child.pid)
        assert first is not None
        time.sleep(1.0)
        stats = sampler.sample(child.pid)
        assert stats is not None
        assert stats.cpu_percent > 50
        assert stats.rss_bytes > 1024 * 1024
        child.kill()
        # Dead but not yet reaped: a zombie has no figures worth reporting.
        deadline = time.monotonic() + 5
        while not dead(child.pid):
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert sampler.sample(child.pid) is None
        child.wait()
    assert sampler.sample(child.pid) is None


def test_stats_sampler_gives_none_for_a_pid_that_never_was():
    assert StatsSampler().sample(2**22 + 1) is None  # above Linux's pid_max limit
