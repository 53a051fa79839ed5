"""The watcher over real child processes: restart with doubling backoff, give up, stop, resize."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from batchfarm.actors.settings import NodeSettings
from batchfarm.supervisor.watcher import (
    ProcessHandle,
    RestartPolicy,
    SlotError,
    Watcher,
    WatcherEvent,
    describe_exit,
)

SLEEPER = "import time; time.sleep(60)"
CRASHER = "import sys; sys.exit(1)"
CLEAN_EXIT = "pass"
#: Ignores SIGTERM and says so once it does, so only SIGKILL ends it.
STUBBORN = (
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN);"
    " print('ready', flush=True); time.sleep(60)"
)


class PopenHandle:
    """A ProcessHandle over subprocess.Popen running ``python -c code``."""

    def __init__(self, name: str, code: str) -> None:
        self.name = name
        self._popen = subprocess.Popen(
            [sys.executable, "-I", "-S", "-c", code], stdout=subprocess.PIPE
        )

    @property
    def pid(self) -> int:
        return self._popen.pid

    @property
    def exitcode(self) -> int | None:
        return self._popen.poll()

    def is_alive(self) -> bool:
        return self._popen.poll() is None

    def terminate(self) -> None:
        self._popen.terminate()

    def kill(self) -> None:
        self._popen.kill()

    def join(self, timeout: float | None = None) -> int | None:
        try:
            return self._popen.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def close(self) -> None:
        if self._popen.poll() is None:
            raise ValueError(f"{self.name} is still running")
        assert self._popen.stdout is not None
        self._popen.stdout.close()

    def readline(self) -> bytes:
        assert self._popen.stdout is not None
        return self._popen.stdout.readline()


class Spawner:
    """The watcher's spawn function: runs ``code[index]`` (or the default), keeps every handle."""

    def __init__(self, default: str = SLEEPER) -> None:
        self.default = default
        self.code: dict[int, str] = {}
        self.spawned: list[tuple[int, PopenHandle]] = []
        self.fail_next: OSError | None = None

    def __call__(self, index: int) -> ProcessHandle:
        if self.fail_next is not None:
            error, self.fail_next = self.fail_next, None
            raise error
        handle = PopenHandle(f"worker-{index}", self.code.get(index, self.default))
        self.spawned.append((index, handle))
        return handle

    def count(self, index: int) -> int:
        return sum(1 for i, _ in self.spawned if i == index)

    def cleanup(self) -> None:
        for _, handle in self.spawned:
            if handle.is_alive():
                handle.kill()
            handle.join(5)
            if handle._popen.stdout is not None:
                handle._popen.stdout.close()


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def spawner() -> Iterator[Spawner]:
    s = Spawner()
    yield s
    s.cleanup()


@pytest.fixture
def clock() -> Clock:
    return Clock()


POLICY = RestartPolicy(backoff_s=0.05, backoff_max_s=0.15, limit=4, window_s=10.0)


def wait_exit(watcher: Watcher, index: int) -> None:
    """Block until the slot's current process has exited (it is reaped by the next poll)."""
    proc = watcher.slots()[index].process
    assert proc is not None
    assert proc.join(10) is not None, "child did not exit"


def poll_until(watcher: Watcher, kind: str, timeout: float = 10) -> list[WatcherEvent]:
    """Poll (on the real clock) until an event of ``kind``; return all events seen."""
    seen: list[WatcherEvent] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        seen += watcher.poll()
        if any(e.kind == kind for e in seen):
            return seen
        time.sleep(0.005)
    raise AssertionError(f"no {kind} event in {timeout} s; saw {seen}")


def kinds(events: list[WatcherEvent]) -> list[tuple[str, int]]:
    return [(e.kind, e.index) for e in events]


# -- the policy ---------------------------------------------------------------------------


def test_delay_doubles_per_crash_up_to_the_cap():
    policy = RestartPolicy(backoff_s=0.5, backoff_max_s=3.0, limit=5, window_s=60)
    assert [policy.delay(n) for n in (1, 2, 3, 4, 5)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    assert policy.delay(10_000) == 3.0  # no overflow on absurd counts
    assert policy.delay(0) == 0.5


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("backoff_s", -1.0, "backoff_s is -1.0, expected 0 or more"),
        ("backoff_max_s", float("nan"), "backoff_max_s is nan"),
        ("window_s", 0.0, "window_s is 0.0, expected seconds > 0"),
        ("limit", 0, "limit is 0, expected at least 1"),
    ],
)
def test_policy_refuses_bad_values(field, value, expected):
    args = {"backoff_s": 0.5, "backoff_max_s": 30.0, "limit": 5, "window_s": 60.0, field: value}
    with pytest.raises(ValueError, match=expected):
        RestartPolicy(**args)


def test_policy_from_node_settings():
    node = NodeSettings(
        restart_backoff=0.25, restart_backoff_max=9.0, restart_limit=3, restart_window=30.0
    )
    assert RestartPolicy.from_settings(node) == RestartPolicy(0.25, 9.0, 3, 30.0)


def test_describe_exit():
    assert describe_exit(3) == "exit code 3"
    assert describe_exit(-signal.SIGKILL) == "killed by SIGKILL"
    assert describe_exit(-200) == "killed by signal 200"


# -- crashes and restarts -----------------------------------------------------------------


def test_a_crashing_child_restarts_after_a_doubling_backoff_then_is_given_up(spawner, clock):
    spawner.default = CRASHER
    seen: list[WatcherEvent] = []
    watcher = Watcher(spawner, POLICY, clock=clock, on_event=seen.append)
    watcher.start(1)  # no poll before the child exits: it may exit at once

    for crash, delay in enumerate([0.05, 0.1, 0.15], start=1):  # 0.2 is capped at 0.15
        wait_exit(watcher, 0)
        events = watcher.poll()
        if crash == 1:
            assert events[0] == WatcherEvent(
                "started", 0, spawner.spawned[0][1].pid, None, "worker-0 started"
            )
            events = events[1:]
        assert kinds(events) == [("crashed", 0), ("restarting", 0)]
        assert events[0].exitcode == 1
        assert events[0].detail == "exit code 1"
        plural = "es" if crash > 1 else ""
        assert events[1].detail == f"in {delay:g} s ({crash} crash{plural} in 10 s)"
        slot = watcher.slots()[0]
        assert slot.state == "backoff"
        assert slot.process is None
        assert slot.last_exit == 1
        assert slot.next_start == pytest.approx(clock.now + delay)
        assert watcher.next_deadline() == slot.next_start

        clock.now += delay * 0.9  # not yet
        assert watcher.poll() == []
        assert spawner.count(0) == crash
        clock.now += delay * 0.1 + 1e-9
        assert kinds(watcher.poll()) == [("started", 0)]
        assert spawner.count(0) == crash + 1
        assert watcher.slots()[0].restarts == crash

    wait_exit(watcher, 0)
    events = watcher.poll()
    assert kinds(events) == [("crashed", 0), ("gave_up", 0)]
    slot = watcher.slots()[0]
    assert slot.state == "failed"
    assert slot.given_up_reason == "4 crashes in 10 s (limit 4); last: exit code 1"
    assert events[1].detail == slot.given_up_reason
    assert watcher.next_deadline() is None
    assert watcher.all_stopped()

    clock.now += 3600
    assert watcher.poll() == []
    assert spawner.count(0) == 4  # never spawned again
    # on_event saw exactly what poll() returned, in order.
    assert [e.kind for e in seen].count("started") == 4
    assert seen[-1].kind == "gave_up"


def test_crashes_spread_wider_than_the_window_are_never_given_up(spawner, clock):
    spawner.default = CRASHER
    policy = RestartPolicy(backoff_s=0.05, backoff_max_s=1.0, limit=3, window_s=1.0)
    watcher = Watcher(spawner, policy, clock=clock)
    watcher.start(1)
    for _ in range(6):
        wait_exit(watcher, 0)
        events = watcher.poll()
        assert kinds(events)[-1] == ("restarting", 0)
        # The window holds one crash at a time, so the backoff never doubles.
        assert events[-1].detail == "in 0.05 s (1 crash in 1 s)"
        clock.now += 1.5
        assert kinds(watcher.poll()) == [("started", 0)]
    assert watcher.slots()[0].state == "starting"
    assert spawner.count(0) == 7


def test_restarts_on_the_real_clock_wait_for_the_backoff(spawner):
    spawner.default = CRASHER
    policy = RestartPolicy(backoff_s=0.05, backoff_max_s=1.0, limit=3, window_s=30.0)
    watcher = Watcher(spawner, policy)
    watcher.start(1)
    events = poll_until(watcher, "gave_up")
    assert [e.kind for e in events] == [
        *["started", "crashed", "restarting"] * 2,
        *["started", "crashed", "gave_up"],
    ]
    assert spawner.count(0) == 3
    # Each restart came no earlier than its backoff after the crash was seen.
    slot = watcher.slots()[0]
    crashes = list(slot.crashes)
    assert crashes[1] - crashes[0] >= 0.05
    assert crashes[2] - crashes[1] >= 0.1


def test_an_unexpected_clean_exit_counts_as_a_crash(spawner, clock):
    spawner.default = CLEAN_EXIT
    watcher = Watcher(spawner, POLICY, clock=clock)
    watcher.start(1)
    wait_exit(watcher, 0)
    events = watcher.poll()
    assert kinds(events) == [("started", 0), ("exited", 0), ("restarting", 0)]
    assert events[1].exitcode == 0
    assert "without being told to stop" in events[1].detail
    assert len(watcher.slots()[0].crashes) == 1


def test_a_failed_spawn_counts_as_a_crash(spawner, clock):
    watcher = Watcher(spawner, POLICY, clock=clock)
    spawner.fail_next = OSError(11, "Resource temporarily unavailable")
    watcher.start(1)
    events = watcher.poll()
    assert kinds(events) == [("crashed", 0), ("restarting", 0)]
    assert events[0].pid is None
    assert "could not start" in events[0].detail
    assert "Resource temporarily unavailable" in events[0].detail
    clock.now += 0.05
    assert kinds(watcher.poll()) == [("started", 0)]
    assert watcher.slots()[0].process is not None


def test_reset_gives_a_failed_slot_another_chance(spawner, clock):
    spawner.code[0] = CRASHER
    policy = RestartPolicy(backoff_s=0.05, backoff_max_s=1.0, limit=1, window_s=60.0)
    watcher = Watcher(spawner, policy, clock=clock)
    watcher.start(1)
    wait_exit(watcher, 0)
    assert kinds(watcher.poll()) == [("started", 0), ("crashed", 0), ("gave_up", 0)]

    spawner.code[0] = SLEEPER  # the operator fixed the cause
    watcher.reset(0)
    slot = watcher.slots()[0]
    assert slot.state == "starting"
    assert slot.given_up_reason is None
    assert not slot.crashes
    assert kinds(watcher.poll()) == [("started", 0)]
    assert slot.state == "running"
    watcher.reset(0)  # not failed: nothing happens
    assert watcher.poll() == []
    assert spawner.count(0) == 2


# -- stop, kill, resize ---------------------------------------------------------------------


def test_a_stopped_slot_is_reaped_as_stopped_and_not_restarted(spawner, clock):
    watcher = Watcher(spawner, POLICY, clock=clock)
    watcher.start(2)
    watcher.poll()
    assert [s.state for s in watcher.slots()] == ["running", "running"]
    pid = watcher.slots()[1].process.pid

    watcher.stop(1)
    assert watcher.slots()[1].state == "stopping"
    watcher.poll()
    assert watcher.slots()[1].state == "stopping"  # still draining
    watcher.slots()[1].process.terminate()  # the worker finished draining and exited
    wait_exit(watcher, 1)
    events = watcher.poll()
    assert events == [WatcherEvent("stopped", 1, pid, -signal.SIGTERM, "killed by SIGTERM")]
    assert watcher.slots()[1].state == "stopped"
    assert not watcher.all_stopped()
    assert [s.index for s in watcher.alive()] == [0]

    clock.now += 3600
    assert watcher.poll() == []
    assert spawner.count(1) == 1

    watcher.stop(0)
    watcher.stop(0)  # twice is harmless
    watcher.terminate(0)
    wait_exit(watcher, 0)
    assert kinds(watcher.poll()) == [("stopped", 0)]
    assert watcher.all_stopped()
    assert watcher.alive() == []


def test_kill_ends_a_worker_that_ignores_sigterm(spawner, clock):
    spawner.default = STUBBORN
    watcher = Watcher(spawner, POLICY, clock=clock)
    watcher.start(1)
    handle = spawner.spawned[0][1]
    assert handle.readline() == b"ready\n"

    watcher.terminate(0)
    assert handle.join(0.3) is None  # SIGTERM is ignored
    watcher.poll()
    assert watcher.slots()[0].state == "stopping"

    watcher.kill(0)
    wait_exit(watcher, 0)
    events = watcher.poll()
    assert kinds(events) == [("stopped", 0)]
    assert events[0].exitcode == -signal.SIGKILL
    assert events[0].detail == "killed by SIGKILL"
    assert watcher.all_stopped()
    clock.now += 60
    assert watcher.poll() == []
    assert spawner.count(0) == 1


def test_kill_without_stop_is_not_restarted(spawner, clock):
    watcher = Watcher(spawner, POLICY, clock=clock)
    watcher.start(1)
    watcher.kill(0)
    wait_exit(watcher, 0)
    assert kinds(watcher.poll()) == [("started", 0), ("stopped", 0)]
    assert watcher.slots()[0].state == "stopped"


def test_resize_shrinks_highest_first_and_grows_into_stopped_slots(spawner, clock):
    watcher = Watcher(spawner, POLICY, clock=clock)
    watcher.start(2)
    assert kinds(watcher.poll()) == [("started", 0), ("started", 1)]

    assert watcher.resize(1) == [1]
    assert [s.state for s in watcher.slots()] == ["running", "stopping"]
    watcher.slots()[1].process.terminate()
    wait_exit(watcher, 1)
    assert kinds(watcher.poll()) == [("stopped", 1)]

    assert watcher.resize(3) == []
    assert kinds(watcher.poll()) == [("started", 1), ("started", 2)]
    assert [s.state for s in watcher.slots()] == ["running", "running", "running"]
    assert [spawner.count(i) for i in range(3)] == [1, 2, 1]

    watcher.resize(4)
    assert watcher.resize(1) == [3, 2, 1]
    assert [s.state for s in watcher.slots()] == ["running", *["stopping"] * 3]

    assert watcher.resize(0) == [0]  # the node's shutdown
    for slot in watcher.alive():
        slot.process.kill()
    for index in range(4):
        wait_exit(watcher, index)
    assert sorted(kinds(watcher.poll())) == [("started", 3), *[("stopped", i) for i in range(4)]]
    assert watcher.all_stopped()


def test_growing_back_a_stopping_slot_starts_it_once_reaped(spawner, clock):
    watcher = Watcher(spawner, POLICY, clock=clock)
    watcher.start(2)
    watcher.poll()
    assert watcher.resize(1) == [1]
    assert watcher.resize(2) == []  # slot 1 is still draining: it cannot start twice
    assert spawner.count(1) == 1
    assert not watcher.all_stopped()
    watcher.slots()[1].process.terminate()
    wait_exit(watcher, 1)
    assert kinds(watcher.poll()) == [("stopped", 1), ("started", 1)]
    assert spawner.count(1) == 2


def test_shrinking_stops_waiting_and_failed_slots_at_once(spawner, clock):
    spawner.code[1] = CRASHER
    spawner.code[2] = CRASHER
    policy = RestartPolicy(backoff_s=0.05, backoff_max_s=1.0, limit=2, window_s=60.0)
    watcher = Watcher(spawner, policy, clock=clock)
    watcher.start(3)
    wait_exit(watcher, 1)
    wait_exit(watcher, 2)
    watcher.poll()
    clock.now += 0.05
    watcher.poll()  # both restarted
    wait_exit(watcher, 1)
    wait_exit(watcher, 2)
    gave_up = [("crashed", 1), ("crashed", 2), ("gave_up", 1), ("gave_up", 2)]
    assert sorted(kinds(watcher.poll())) == gave_up
    watcher.reset(1)
    wait_exit(watcher, 1)
    events = watcher.poll()
    assert kinds(events)[-1] == ("restarting", 1)
    assert [s.state for s in watcher.slots()] == ["running", "backoff", "failed"]

    assert watcher.resize(1) == []  # nothing to drain: no process above 0
    assert [s.state for s in watcher.slots()] == ["running", "stopped", "stopped"]
    assert [e.detail for e in watcher.poll()] == ["no longer wanted"] * 2
    assert watcher.next_deadline() is None
    clock.now += 60
    assert watcher.poll() == []


def test_unknown_slots_and_bad_counts_are_refused(spawner, clock):
    watcher = Watcher(spawner, POLICY, clock=clock)
    with pytest.raises(SlotError, match="no worker slot 0; slots are none yet"):
        watcher.stop(0)
    watcher.start(2)
    with pytest.raises(SlotError, match="no worker slot 7; slots are 0 to 1"):
        watcher.kill(7)
    with pytest.raises(ValueError, match="worker count is -1, expected 0 or more"):
        watcher.resize(-1)
    with pytest.raises(RuntimeError, match="already started with 2 slots"):
        watcher.start(2)
