"""Actors in spawned child processes: mailboxes, replies, exit codes, signals, parent death."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import zmq

from batchfarm.actors.messages import Command
from batchfarm.actors.runtime import ExitCode, describe_exit, mailbox_address
from batchfarm.actors.sockets import make_socket
from tests.runtime.sample_actors import Echo, Nester, broken_config, broken_factory

ROOT = Path(__file__).resolve().parents[2]


def test_a_spawned_actor_receives_frames_and_replies(spawned, replies):
    proc = spawned(Echo, replies.address)
    # Sent before the child has bound its mailbox: it waits in the parent's queue.
    proc.send(Command(name="drain", id="early"))
    started = replies.expect("started")
    assert started["pid"] == proc.pid != os.getpid()
    assert replies.get() == Command(name="drain", id="early")
    for i in range(20):
        proc.send(Command(name="resize", id=f"n{i}", args={"workers": i}))
    assert [replies.get() for _ in range(20)] == [
        Command(name="resize", id=f"n{i}", args={"workers": i}) for i in range(20)
    ]
    assert proc.is_alive()
    assert proc.exitcode is None


def test_sigterm_stops_the_actor_cleanly(spawned, replies):
    proc = spawned(Echo, replies.address)
    replies.expect("started")
    proc.terminate()
    assert replies.expect("signal") == {"signum": signal.SIGTERM}
    replies.expect("stopped")
    assert proc.join(10) == ExitCode.OK
    assert not proc.is_alive()
    assert describe_exit(proc.exitcode) == "ok"


def test_an_exception_in_receive_calls_on_failure_and_exits_failed(spawned, replies):
    proc = spawned(Echo, replies.address)
    replies.expect("started")
    proc.send(Command(name="stop", id="crash"))
    assert replies.expect("failure") == {"error": "asked to crash"}
    replies.expect("stopped")  # on_stop still releases what on_start took
    assert proc.join(10) == ExitCode.FAILED


def test_a_bad_frame_is_counted_and_the_actor_keeps_running(spawned, replies, zctx):
    proc = spawned(Echo, replies.address)
    replies.expect("started")
    raw = make_socket(zctx, zmq.PUSH)
    try:
        raw.connect(proc.address)
        raw.send(b"\xc1 not msgpack")
        raw.send_multipart([b"two", b"parts"])
        raw.send(b"\x81\xa4kind\xa4nope")  # msgpack, but no such record
    finally:
        raw.close(linger=1000)  # deliver what was sent
    # Frames from one peer arrive in order, so the count is final when this is answered.
    wait_for = time.monotonic() + 10
    while True:
        proc.send(Command(name="stop", id="rejects"))
        counts = replies.expect("rejects")
        if counts["total"] == 3 or time.monotonic() > wait_for:
            break
    assert counts == {"total": 3, "format": 2, "kind": 1}
    proc.send(Command(name="drain", id="still-here"))
    assert replies.get() == Command(name="drain", id="still-here")


def test_sigint_is_ignored_in_the_child(spawned, replies):
    proc = spawned(Echo, replies.address)
    replies.expect("started")
    os.kill(proc.pid, signal.SIGINT)
    proc.send(Command(name="drain", id="after-sigint"))
    assert replies.get() == Command(name="drain", id="after-sigint")
    assert replies.nothing_for(0.1)  # no on_signal: SIGINT is not even caught
    assert proc.is_alive()
    proc.send(Command(name="stop", id="stop"))
    replies.expect("stopped")
    assert proc.join(10) == ExitCode.OK


def test_a_child_is_pinned_before_its_actor_is_built(spawned, replies):
    proc = spawned(Echo, replies.address, cpus=[0])
    assert replies.expect("started")["cpus"] == [0]
    proc.kill()
    assert proc.join(10) == -signal.SIGKILL
    assert describe_exit(proc.exitcode) == "killed by SIGKILL"


def test_spawn_refuses_cpus_the_parent_may_not_use(spawned, replies):
    with pytest.raises(ValueError, match=r"cpus \[4096\]: expected a non-empty list from"):
        spawned(Echo, replies.address, cpus=[4096])
    with pytest.raises(ValueError, match="non-empty"):
        spawned(Echo, replies.address, cpus=[])


@pytest.mark.parametrize(
    ("factory", "code"), [(broken_config, ExitCode.CONFIG), (broken_factory, ExitCode.FAILED)]
)
def test_a_factory_that_raises_gives_a_named_exit_code(spawned, factory, code, capfd):
    proc = spawned(factory)
    assert proc.join(20) == code
    err = capfd.readouterr().err
    assert "node.workers" in err if code == ExitCode.CONFIG else "cannot build" in err


def test_a_closed_handle_keeps_its_exit_code(spawned, replies):
    proc = spawned(Echo, replies.address)
    replies.expect("started")
    proc.send(Command(name="stop", id="stop"))
    proc.close()  # still running: only the socket is released
    assert proc.join(10) == ExitCode.OK
    proc.close()
    assert proc.exitcode == ExitCode.OK
    assert not proc.is_alive()
    proc.terminate()  # a no-op: the pid may be someone else's by now
    with pytest.raises(RuntimeError, match="closed"):
        proc.send(Command(name="stop"))


def dead(proc: psutil.Process) -> bool:
    """Gone, or a zombie (dead, waiting for a reaper: in a container PID 1 may not reap)."""
    try:
        return proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_the_child_dies_when_its_parent_is_killed(run_dir):
    path = [p for p in (os.environ.get("PYTHONPATH"), str(ROOT)) if p]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(path)}
    with subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name("children.py")), str(run_dir)],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
        cwd=ROOT,
    ) as parent:
        try:
            assert parent.stdout is not None
            line = parent.stdout.readline()
            assert line, f"the parent exited early with {parent.wait()}"
            child = psutil.Process(int(line))
            assert child.ppid() == parent.pid
            parent.kill()
            parent.wait()
            start = time.monotonic()
            while not dead(child):
                assert time.monotonic() - start < 2, "the child outlived its parent by 2 s"
                time.sleep(0.01)
        finally:
            if parent.poll() is None:
                parent.kill()


def test_an_actor_may_spawn_actors_which_die_with_it(spawned, replies, run_dir):
    proc = spawned(Nester, replies.address, str(run_dir))
    grandchild = psutil.Process(replies.expect("started")["pid"])
    assert grandchild.ppid() == proc.pid
    proc.kill()
    assert proc.join(10) == -signal.SIGKILL
    start = time.monotonic()
    while not dead(grandchild):
        assert time.monotonic() - start < 2, "the nested actor outlived its parent by 2 s"
        time.sleep(0.01)


def test_a_nested_actor_stops_with_a_clean_parent(spawned, replies, run_dir):
    proc = spawned(Nester, replies.address, str(run_dir))
    replies.expect("started")
    proc.terminate()  # the Nester's on_stop terminates its child: SIGTERM, on_signal, on_stop
    assert replies.expect("signal") == {"signum": signal.SIGTERM}
    replies.expect("stopped")
    assert proc.join(10) == ExitCode.OK


def test_mailbox_addresses_are_absolute_ipc_paths(run_dir, monkeypatch):
    assert mailbox_address(run_dir, "worker-0") == f"ipc://{run_dir}/worker-0.sock"
    monkeypatch.chdir(run_dir)
    assert mailbox_address(Path("sub"), "w") == f"ipc://{run_dir}/sub/w.sock"


def test_a_mailbox_path_too_long_for_a_unix_socket_is_refused(run_dir):
    deep = run_dir / ("d" * 100)
    with pytest.raises(
        ValueError, match=r"mailbox path .*dddd/w\.sock is \d+ bytes; .* at most 107"
    ):
        mailbox_address(deep, "w")


@pytest.mark.parametrize("name", ["", "../up", "a/b", "-x", "a b", "x" * 65])
def test_a_bad_actor_name_is_refused(run_dir, name):
    with pytest.raises(ValueError, match="actor name"):
        mailbox_address(run_dir, name)
