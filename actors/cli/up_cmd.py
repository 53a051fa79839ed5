"""``batchfarm up``: the manager and one node on this machine, as two child processes.

Both children read the same config (``--config`` goes down as ``BATCHFARM_CONFIG``). They
run in a process group of their own, so a Ctrl-C in the terminal reaches only ``up``, which
stops them in order: the node first (SIGTERM: it drains, its running tasks finish), then the
manager, which records what the node reported last. Each child is asked by the kernel to get
SIGTERM should ``up`` itself die without stopping them.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from types import FrameType

import click

from batchfarm.actors.backends.fleet.local import spawn_verb
from batchfarm.actors.cli.client import ApiClient, ApiError
from batchfarm.actors.cli.context import CliState
from batchfarm.actors.errors import BatchfarmError
from batchfarm.actors.settings import CONFIG_ENV

#: Seconds the manager gets to answer on ``[api] listen`` after it starts.
START_TIMEOUT_S = 60.0
#: Seconds between looks at the children.
POLL_S = 0.2
#: Seconds the manager gets to stop after SIGTERM, and the node beyond its drain grace.
STOP_GRACE_S = 30.0


class UpError(BatchfarmError):
    """A child of ``up`` died, or the manager never answered."""


@dataclass
class _Child:
    """One child process and what to call it in messages."""

    name: str
    proc: subprocess.Popen[bytes]
    stop_after_s: float

    def exited(self) -> int | None:
        return self.proc.poll()


@dataclass
class _Signals:
    """SIGTERM and SIGINT, counted instead of raising: ``up`` stops its children itself."""

    count: int = 0
    names: list[str] = field(default_factory=list)

    def install(self) -> None:
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._handle)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.count += 1
        self.names.append(signal.Signals(signum).name)


@click.command("up")
@click.option(
    "--workers",
    type=click.IntRange(1),
    help="Worker actors on the local node (BATCHFARM_NODE_WORKERS; default: [node] workers).",
)
@click.pass_obj
def up(state: CliState, workers: int | None) -> None:
    """Run a whole grid on this machine: `batchfarm manager` and one `batchfarm node`.

    Waits until the manager's API answers, then prints where it is and the state folder.
    SIGTERM or Ctrl-C stops the node first (it drains: running tasks finish within
    [node] drain_grace) and then the manager; a second one stops the node at once. Exits 0
    after a clean stop; if either child dies, the other is stopped and `up` exits 1 naming
    the one that died.
    """
    loaded = state.loaded  # a bad config stops here, before any child starts
    settings = loaded.settings
    env = dict(os.environ)
    if state.config_path is not None:
        env[CONFIG_ENV] = os.path.abspath(state.config_path)
    node_env = dict(env)
    if workers is not None:
        node_env["BATCHFARM_NODE_WORKERS"] = str(workers)
    signals = _Signals()
    signals.install()
    manager = _Child("manager", spawn_verb("manager", env), STOP_GRACE_S)
    node = _Child("node", spawn_verb("node", node_env), settings.node.drain_grace + STOP_GRACE_S)
    children = (node, manager)  # the order they stop in
    died: _Child | None = None
    try:
        with ApiClient.from_loaded(loaded) as api:
            died = _wait_ready(api, children, signals)
        if died is None and not signals.count:
            click.echo(
                f"batchfarm up: API at {settings.api.listen}, state in"
                f" {settings.grid.state_dir} (grid {settings.grid.name!r}); Ctrl-C stops it"
            )
            sys.stdout.flush()
            while died is None and not signals.count:
                time.sleep(POLL_S)
                died = next((c for c in children if c.exited() is not None), None)
    finally:
        codes = _stop_all(children, signals)
    if died is not None:
        others = " and ".join(c.name for c in children if c is not died)
        raise UpError(f"the {died.name} {_ended(codes[died.name])}; stopped the {others}")
    bad = [f"the {name} {_ended(code)}" for name, code in codes.items() if code != 0]
    if bad:
        raise UpError("; ".join(bad))
    click.echo("batchfarm up: stopped")


def _ended(code: int) -> str:
    """``exited with code 1`` or ``was killed by SIGKILL``."""
    if code < 0:
        return f"was killed by {signal.Signals(-code).name}"
    return f"exited with code {code}"


def _wait_ready(api: ApiClient, children: tuple[_Child, ...], signals: _Signals) -> _Child | None:
    """Wait until the API answers; the child that died meanwhile, if one did."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while not signals.count:
        for child in children:
            if child.exited() is not None:
                return child
        try:
            api.health()
            return None
        except ApiError:
            if time.monotonic() > deadline:
                raise UpError(
                    f"the manager's API did not answer at {api.base_url} within"
                    f" {START_TIMEOUT_S:.0f} s; stopping"
                ) from None
        time.sleep(POLL_S)
    return None


def _stop_all(children: tuple[_Child, ...], signals: _Signals) -> dict[str, int]:
    """Stop each child in turn (SIGTERM, then SIGKILL after its grace); their exit codes."""
    codes: dict[str, int] = {}
    for child in children:
        if child.exited() is None:
            child.proc.send_signal(signal.SIGTERM)
            seen = signals.count
            deadline = time.monotonic() + child.stop_after_s
            while child.exited() is None and time.monotonic() < deadline:
                if signals.count > seen:  # asked again: stop at once (the node skips its drain)
                    seen = signals.count
                    child.proc.send_signal(signal.SIGTERM)
                time.sleep(POLL_S / 2)
            if child.exited() is None:
                click.echo(f"batchfarm up: the {child.name} did not stop; killing it", err=True)
                child.proc.kill()
        codes[child.name] = child.proc.wait()
    return codes
