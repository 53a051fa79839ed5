"""The actor loop in this process: timers, thread-safe callbacks, failures, signals."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest
import zmq

from batchfarm.actors.codec import encode_frame
from batchfarm.actors.messages import Command, Record
from batchfarm.actors.runtime import Actor, ExitCode, mailbox_address, run_actor
from batchfarm.actors.sockets import make_socket
from tests.runtime.sample_actors import Idle, SelfSignaller, Timed


def test_timers_fire_in_order_within_tolerance(in_thread):
    actor = Timed()
    assert in_thread(actor).join() == ExitCode.OK
    names = [name for name, _ in actor.events]
    assert names == [
        "tick-1",  # 0.04
        "after-0.05",
        "after-0.05-second",  # same delay, scheduled later: fires later
        "tick-2",  # 0.08
        "tick-3",  # 0.12, then the ticker is cancelled
        "after-0.15",
    ]
    due = {"tick-1": 0.04, "after-0.05": 0.05, "tick-2": 0.08, "tick-3": 0.12, "after-0.15": 0.15}
    for name, at in actor.events:
        if name in due:
            # Never early; late by a loaded CI machine's scheduling at most.
            assert due[name] <= at < due[name] + 0.1, (name, at)


def test_call_soon_threadsafe_wakes_an_idle_loop_at_once(in_thread):
    actor = Idle()
    run = in_thread(actor)
    assert actor.ready.wait(10)
    time.sleep(0.05)  # let the loop settle into its (timeout-less) poll
    latencies = []
    for _ in range(5):
        queued = time.monotonic()
        done = threading.Event()
        ran_at: list[float] = []

        def callback(done: threading.Event = done, ran_at: list[float] = ran_at) -> None:
            ran_at.append(time.monotonic())
            actor.ran()
            done.set()

        threading.Thread(target=actor.call_soon_threadsafe, args=(callback,)).start()
        assert done.wait(5)
        latencies.append(ran_at[0] - queued)
    actor.call_soon_threadsafe(actor.stop)
    assert run.join() == ExitCode.OK
    assert max(latencies) < 1.0, latencies  # typically well under a millisecond
    assert set(actor.callbacks_ran_on) == {run.thread.ident}  # on the loop, not the caller


class Failing(Actor):
    """Fails in a timer; records the hooks that ran."""

    def __init__(self, fail_in: str) -> None:
        self.fail_in = fail_in
        self.calls: list[str] = []
        self.error: BaseException | None = None

    def on_start(self) -> None:
        self.calls.append("on_start")
        if self.fail_in == "on_start":
            raise ValueError("start failed")
        self.after(0.01, self.boom)

    def boom(self) -> None:
        self.calls.append("timer")
        raise ValueError("timer failed")

    def on_failure(self, error: BaseException) -> None:
        self.calls.append("on_failure")
        self.error = error

    def on_stop(self) -> None:
        self.calls.append("on_stop")


def test_an_exception_in_a_timer_calls_on_failure_then_on_stop(in_thread, caplog):
    actor = Failing("timer")
    assert in_thread(actor).join() == ExitCode.FAILED
    assert actor.calls == ["on_start", "timer", "on_failure", "on_stop"]
    assert isinstance(actor.error, ValueError)
    assert "failed in a timer" in caplog.text


def test_a_failed_on_start_skips_the_loop_and_on_stop(in_thread):
    actor = Failing("on_start")
    assert in_thread(actor).join() == ExitCode.FAILED
    assert actor.calls == ["on_start", "on_failure"]


class Stopper(Actor):
    """Stops with a given code as soon as it starts."""

    def __init__(self, code: ExitCode) -> None:
        self.code = code

    def on_start(self) -> None:
        self.stop(self.code)
        self.stop(ExitCode.OK)  # the first code asked for is kept


def test_stop_codes_are_returned(in_thread):
    assert in_thread(Stopper(ExitCode.HUNG)).join() == ExitCode.HUNG


def test_an_actor_whose_parent_changed_stops_orphaned(in_thread):
    actor = Failing("nothing")
    assert in_thread(actor, parent_pid=os.getppid() + 1_000_000).join() == ExitCode.ORPHANED
    assert actor.calls == []  # never started


def test_a_mailbox_that_cannot_be_bound_gives_config(run_dir, caplog):
    address = f"ipc://{run_dir}/no-such-dir/a.sock"
    assert run_actor(Failing("nothing"), address, signals=()) == ExitCode.CONFIG
    assert "cannot bind mailbox" in caplog.text


class Recorder(Actor):
    """Keeps what it receives; stops on a stop command."""

    def __init__(self) -> None:
        self.got: list[Record] = []

    def receive(self, message: Record) -> None:
        self.got.append(message)
        if isinstance(message, Command) and message.name == "stop":
            self.stop()


def test_a_flood_is_dispatched_in_order_and_stop_ends_it(in_thread, run_dir, zctx):
    actor = Recorder()
    run = in_thread(actor)
    push = make_socket(zctx, zmq.PUSH)
    try:
        push.connect(mailbox_address(run_dir, "actor"))
        for i in range(500):
            push.send(encode_frame(Command(name="drain", id=str(i))))
        push.send(encode_frame(Command(name="stop")))
        push.send(encode_frame(Command(name="drain", id="after-stop")))
        assert run.join() == ExitCode.OK
    finally:
        push.close()
    assert [m.id for m in actor.got if isinstance(m, Command)] == [*map(str, range(500)), ""]


class Flooder(Actor):
    """Sends to a mailbox nobody reads until the queue is full."""

    def __init__(self, dead_end: str) -> None:
        self.dead_end = dead_end
        self.dropped_count = 0

    def on_start(self) -> None:
        for i in range(12_000):
            self.send(self.dead_end, Command(name="drain", id=str(i)))
        self.dropped_count = self.dropped[self.dead_end]
        self.stop()


def test_send_never_blocks_and_counts_drops(in_thread, run_dir):
    actor = Flooder(mailbox_address(run_dir, "nobody"))
    start = time.monotonic()
    assert in_thread(actor).join() == ExitCode.OK
    assert time.monotonic() - start < 5
    assert 0 < actor.dropped_count <= 12_000 - 10_000  # the high-water mark held the rest


def test_services_need_a_running_actor():
    actor = Actor()
    with pytest.raises(RuntimeError, match="Actor is not running"):
        actor.every(1, lambda: None)
    with pytest.raises(RuntimeError, match="not running"):
        _ = actor.address


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda a: a.every(0, lambda: None), "interval_s is 0, expected more than 0 seconds"),
        (lambda a: a.after(-1, lambda: None), "delay_s is -1, expected 0 or more seconds"),
        (lambda a: a.after(float("nan"), lambda: None), "delay_s is nan, expected a finite"),
    ],
)
def test_bad_timer_delays_are_refused_by_name(in_thread, call, message):
    errors: list[Exception] = []

    class Scheduler(Actor):
        def on_start(self) -> None:
            try:
                call(self)
            except ValueError as e:
                errors.append(e)
            self.stop()

    in_thread(Scheduler()).join()
    assert len(errors) == 1
    assert message in str(errors[0])


# ---------------------------------------------------------------------------------------
# Signals: the handler only records, the loop calls on_signal


def test_on_signal_only_sets_state():
    actor = Actor()
    actor.on_signal(signal.SIGHUP)
    assert actor.stopping is None  # not ours to handle by default
    actor.on_signal(signal.SIGTERM)
    assert actor.stopping == ExitCode.OK  # a stop request, nothing more: there is no loop


def test_a_real_signal_reaches_on_signal_through_the_loop(run_dir):
    before = signal.getsignal(signal.SIGUSR1)
    actor = SelfSignaller(signal.SIGUSR1)
    code = run_actor(actor, mailbox_address(run_dir, "self"), signals=(signal.SIGUSR1,))
    assert code == ExitCode.HUNG
    # Called once, on this (the loop's) thread, after on_start had returned: the handler
    # itself only recorded the signal.
    assert actor.calls == [(signal.SIGUSR1, False, threading.get_ident())]
    assert signal.getsignal(signal.SIGUSR1) is before  # restored


def test_a_signal_wakes_a_loop_waiting_in_poll(run_dir):
    actor = Idle()

    def send_later() -> None:
        actor.ready.wait(10)
        time.sleep(0.1)  # the loop is in its timeout-less poll by now
        os.kill(os.getpid(), signal.SIGTERM)

    sender = threading.Thread(target=send_later)
    sender.start()
    start = time.monotonic()
    code = run_actor(actor, mailbox_address(run_dir, "idle"))
    sender.join()
    assert code == ExitCode.OK
    assert time.monotonic() - start < 2


def test_signal_handlers_need_the_main_thread(run_dir):
    errors: list[Exception] = []

    def run() -> None:
        try:
            run_actor(Actor(), mailbox_address(run_dir, "t"), signals=(signal.SIGTERM,))
        except ValueError as e:
            errors.append(e)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(10)
    assert "main thread" in str(errors[0])
