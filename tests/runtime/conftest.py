"""Fixtures for the runtime tests: a short run directory, a reply mailbox, spawned actors.

Mailboxes are Unix sockets, whose paths are limited to 107 bytes, so run directories are
made directly under /tmp rather than under pytest's long per-test paths.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq

from batchfarm.actors.codec import decode_frame
from batchfarm.actors.messages import Command, Record
from batchfarm.actors.runtime import (
    Actor,
    ActorProcess,
    ExitCode,
    mailbox_address,
    run_actor,
    spawn,
)
from batchfarm.actors.sockets import make_socket


@pytest.fixture
def run_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="bf-rt-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def zctx() -> Iterator[zmq.Context]:
    ctx = zmq.Context()
    yield ctx
    ctx.destroy(linger=0)


class Replies:
    """The test's own mailbox: actors send their reports here."""

    def __init__(self, ctx: zmq.Context, run_dir: Path) -> None:
        self.address = mailbox_address(run_dir, "test")
        self.sock = make_socket(ctx, zmq.PULL)
        self.sock.bind(self.address)

    def get(self, timeout_s: float = 10.0) -> Record:
        assert self.sock.poll(int(timeout_s * 1000)), f"no reply within {timeout_s} s"
        return decode_frame(self.sock.recv())

    def expect(self, event: str, timeout_s: float = 10.0) -> dict[str, Any]:
        """The next report, which must be ``event``; its details."""
        got = self.get(timeout_s)
        assert isinstance(got, Command), got
        assert got.id == event, f"expected {event!r}, got {got}"
        return got.args

    def nothing_for(self, seconds: float) -> bool:
        return self.sock.poll(int(seconds * 1000)) == 0


@pytest.fixture
def replies(zctx: zmq.Context, run_dir: Path) -> Iterator[Replies]:
    r = Replies(zctx, run_dir)
    yield r
    r.sock.close()


@pytest.fixture
def spawned(run_dir: Path) -> Iterator[Callable[..., ActorProcess]]:
    """spawn(), with every child killed (if still running), reaped and closed at the end."""
    procs: list[ActorProcess] = []

    def start(factory: Callable[..., Actor], *args: Any, name: str = "actor", **kw: Any):
        proc = spawn(factory, *args, address=mailbox_address(run_dir, name), name=name, **kw)
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.is_alive():
            proc.kill()
        proc.join(10)
        proc.close()


class InThread:
    """An actor run by run_actor on a thread (signals=()), for tests of the loop itself."""

    def __init__(self, actor: Actor, address: str, **kw: Any) -> None:
        self.actor = actor
        self.code: ExitCode | None = None
        self.thread = threading.Thread(target=self._run, args=(address,), kwargs=kw)
        self.thread.start()

    def _run(self, address: str, **kw: Any) -> None:
        self.code = run_actor(self.actor, address, signals=(), **kw)

    def join(self, timeout_s: float = 10.0) -> ExitCode | None:
        self.thread.join(timeout_s)
        assert not self.thread.is_alive(), "the actor's loop did not end"
        return self.code


@pytest.fixture
def in_thread(run_dir: Path) -> Iterator[Callable[..., InThread]]:
    runs: list[InThread] = []

    def start(actor: Actor, name: str = "actor", **kw: Any) -> InThread:
        run = InThread(actor, mailbox_address(run_dir, name), **kw)
        runs.append(run)
        return run

    yield start
    for run in runs:
        if run.thread.is_alive():
            run.actor.stop()  # stop() is safe from another thread, even before the loop runs
            run.thread.join(10)
