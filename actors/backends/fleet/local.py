"""The fleet as ``batchfarm node`` processes on this machine: the embedded default scales too.

:class:`LocalFleet` plays an Auto Scaling group whose instances are child processes named
``local-1``, ``local-2``, ... (each node names itself by its instance id, as on EC2). Raising
the desired capacity starts nodes; :meth:`LocalFleet.terminate` sends SIGTERM, which drains
the node (its running tasks finish), and lowers the desired capacity, like AWS's
TerminateInstanceInAutoScalingGroup with decrement. A node that exits on its own (drained by
hand, or crashed) leaves the fleet, and the desired capacity goes down with it: the
autoscaler starts another if the backlog needs one. Lowering the desired capacity by hand
drains the newest unprotected nodes, as a group picks unprotected instances.

Every node runs with the manager's effective settings, passed as ``BATCHFARM_*`` variables
(which override any file), so it reads the same queues, blob store and telemetry endpoint.
:func:`spawn_verb` is how ``batchfarm up`` starts its children too.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from batchfarm.actors.backends.fleet import (
    IN_SERVICE,
    TERMINATING,
    Fleet,
    FleetError,
    FleetState,
    Instance,
)
from batchfarm.actors.settings.load import ENV_PREFIX
from batchfarm.actors.settings.model import Settings

log = logging.getLogger(__name__)

#: What a local node's instance id starts with: ``local-1``, ``local-2``, ...
PREFIX = "local"
#: Seconds :meth:`LocalFleet.terminate` lets a node exit by itself before its SIGTERM.
EXIT_WAIT_S = 2.0
#: Seconds :meth:`LocalFleet.close` waits for its draining nodes before leaving them to it.
CLOSE_WAIT_S = 10.0
_PR_SET_PDEATHSIG = 1


def spawn_verb(verb: str, env: Mapping[str, str], *args: str) -> subprocess.Popen[bytes]:
    """Start ``batchfarm VERB ARGS`` in a process group of its own, SIGTERMed if we die.

    Its own group: a Ctrl-C in our terminal reaches only us, and we stop it in order.
    """
    return subprocess.Popen(
        [sys.executable, "-m", "batchfarm.actors.cli", verb, *args],
        env=dict(env),
        process_group=0,
        # The preexec only calls prctl and getppid, resolved before the fork, and takes no
        # lock: safe in a process with threads too (the manager has some).
        preexec_fn=term_with_parent(),  # noqa: PLW1509
    )


def term_with_parent() -> Callable[[], None] | None:
    """A preexec_fn asking the kernel to SIGTERM the child when this process dies (Linux).

    The kernel signals when the *thread* that forked the child ends: spawn from a thread
    that lives as long as the process (the main thread, where actor loops run).
    """
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl  # resolved before the fork
    parent = os.getpid()

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl: no signal would ever come
            os.kill(os.getpid(), signal.SIGTERM)

    return preexec


def settings_environment(settings: Settings) -> dict[str, str]:
    """Every setting as the ``BATCHFARM_<SECTION>_<KEY>`` variable that reproduces it."""
    env: dict[str, str] = {}
    for section in dataclasses.fields(settings):
        values = getattr(settings, section.name)
        if section.metadata.get("table"):  # [classes.NAME] tables: one inline table
            env[f"{ENV_PREFIX}{section.name.upper()}"] = _env_text(values)
            continue
        for fld in dataclasses.fields(values):
            env[f"{ENV_PREFIX}{section.name.upper()}_{fld.name.upper()}"] = _env_text(
                getattr(values, fld.name)
            )
    return env


def _env_text(value: Any) -> str:
    """A value as the loader reads it from a variable (a table of tables as inline TOML)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + "}"
    return str(value)


def _toml(value: Any) -> str:
    if isinstance(value, str):
        return json.dumps(value)  # a TOML basic string: JSON's escapes are TOML's
    return _env_text(value)


def node_environment(settings: Settings, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a local node: ``base`` (ours) with the manager's settings on top.

    No node of this machine serves its own /metrics port or watches EC2's metadata: two
    nodes would want the same port, and no EC2 instance is there to watch.
    """
    env = dict(os.environ if base is None else base)
    env.update(settings_environment(settings))
    env[f"{ENV_PREFIX}NODE_METRICS_LISTEN"] = ""
    env[f"{ENV_PREFIX}NODE_METADATA_URL"] = ""
    return env


@dataclass
class _Node:
    """One child node and what the fleet knows of it."""

    id: str
    proc: subprocess.Popen[bytes]
    protected: bool = False
    #: Told to go (terminated, or beyond a lowered desired capacity): its exit is expected.
    leaving: bool = False


class LocalFleet(Fleet):
    """``batchfarm node`` child processes on this machine (see the module docstring).

    ``env`` is the nodes' environment (see :func:`node_environment`); ``prefix`` names them.
    """

    def __init__(
        self,
        min_nodes: int,
        max_nodes: int,
        env: Mapping[str, str] | None = None,
        *,
        prefix: str = PREFIX,
    ) -> None:
        if not 0 <= min_nodes <= max_nodes:
            raise FleetError(
                f"local fleet: min {min_nodes}, max {max_nodes}: expected 0 <= min <= max"
            )
        self.name = f"local fleet {prefix!r}"
        self.min = min_nodes
        self.max = max_nodes
        self._env = dict(os.environ if env is None else env)
        self._prefix = prefix
        self._nodes: dict[str, _Node] = {}
        self._desired = 0
        self._count = 0

    @classmethod
    def from_url(cls, url: str) -> LocalFleet:
        """The fleet of ``local://?min=N&max=M`` (both optional: 0 and 1); nodes get our env."""
        parts = urlsplit(url)
        expected = "expected local://?min=N&max=M"
        if parts.netloc or parts.path not in ("", "/") or parts.fragment:
            raise FleetError(f"fleet URL {url!r}: {expected}")
        limits = {"min": 0, "max": 1}
        for key, value in parse_qsl(parts.query, keep_blank_values=True):
            if key not in limits or not value.isdigit():
                raise FleetError(f"fleet URL {url!r}: {key}={value!r}: {expected}")
            limits[key] = int(value)
        return cls(limits["min"], limits["max"])

    def __repr__(self) -> str:
        return f"LocalFleet({self.min}, {self.max}, prefix={self._prefix!r})"

    def state(self) -> FleetState:
        """The fleet's capacity and its live nodes (reaps those that exited)."""
        self._reap()
        instances = tuple(
            Instance(
                id=node.id,
                lifecycle_state=TERMINATING if node.leaving else IN_SERVICE,
                health="Healthy",
                protected_from_scale_in=node.protected,
            )
            for node in self._nodes.values()
        )
        return FleetState(self._desired, self.min, self.max, instances)

    def set_desired(self, desired: int) -> int:
        """Start nodes up to ``desired`` (clamped), or drain the newest unprotected ones."""
        state = self.state()
        applied = state.clamp(desired)
        self._desired = applied
        staying = [node for node in self._nodes.values() if not node.leaving]
        for _ in range(applied - len(staying)):
            self._start()
        surplus = len(staying) - applied
        for node in reversed([n for n in staying if not n.protected]):
            if surplus <= 0:
                break
            self._leave(node)
            surplus -= 1
        return applied

    def protect(self, instance_ids: Sequence[str], protected: bool = True) -> None:
        """Set (or clear) scale-in protection: lowering the capacity then skips these nodes."""
        self._reap()
        strangers = sorted(set(instance_ids) - set(self._nodes))
        if strangers:
            raise FleetError(f"{self.name}: protect: not members: {', '.join(strangers)}")
        for instance_id in instance_ids:
            self._nodes[instance_id].protected = protected

    def terminate(self, instance_id: str) -> None:
        """SIGTERM a node (it drains, then exits) and lower the desired capacity by one.

        A node the autoscaler found drained is exiting by itself already: it gets up to
        :data:`EXIT_WAIT_S` to, as a SIGTERM in its last moments (its signal handlers gone)
        would end it with -15 instead of its own 0.
        """
        self._reap()
        node = self._nodes.get(instance_id)
        if node is None or node.leaving:
            raise FleetError(f"{self.name}: terminate: {instance_id} is not a member")
        if self._desired <= self.min:
            raise FleetError(
                f"{self.name}: terminate {instance_id}: the desired capacity ({self._desired})"
                f" is the fleet's min ({self.min}), so it cannot go down"
            )
        self._desired -= 1
        with contextlib.suppress(subprocess.TimeoutExpired):
            node.proc.wait(EXIT_WAIT_S)
        self._leave(node)
        self._reap()

    def complete_lifecycle(
        self, instance_id: str, hook: str, result: str = "CONTINUE", token: str = ""
    ) -> None:
        """Refused: local nodes have no lifecycle hooks."""
        raise FleetError(f"{self.name}: local nodes have no lifecycle hook ({hook!r})")

    def lifecycle_heartbeat(self, instance_id: str, hook: str, token: str = "") -> None:
        """Refused: local nodes have no lifecycle hooks."""
        raise FleetError(f"{self.name}: local nodes have no lifecycle hook ({hook!r})")

    def pids(self) -> dict[str, int]:
        """The process id of each live node, by instance id (for tests and logs)."""
        self._reap()
        return {node.id: node.proc.pid for node in self._nodes.values()}

    def close(self) -> None:
        """Drain every node (SIGTERM), wait a little for them, leave the rest draining.

        Each node also gets SIGTERM from the kernel should this process die first.
        """
        for node in self._nodes.values():
            self._leave(node)
        deadline = time.monotonic() + CLOSE_WAIT_S
        for node in list(self._nodes.values()):
            try:
                node.proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("%s: node %s still draining; leaving it to finish", self.name, node.id)
        self._reap()

    def _start(self) -> None:
        self._count += 1
        instance_id = f"{self._prefix}-{self._count}"
        proc = spawn_verb("node", self._env, "--name", instance_id)
        self._nodes[instance_id] = _Node(instance_id, proc)
        log.info("%s: started node %s (pid %d)", self.name, instance_id, proc.pid)

    def _leave(self, node: _Node) -> None:
        if not node.leaving and node.proc.poll() is None:
            node.proc.send_signal(signal.SIGTERM)
            log.info("%s: draining node %s (SIGTERM)", self.name, node.id)
        node.leaving = True

    def _reap(self) -> None:
        for node in list(self._nodes.values()):
            code = node.proc.poll()
            if code is None:
                continue
            del self._nodes[node.id]
            if not node.leaving:
                # It left on its own (drained by command or by hand, crashed): the fleet
                # shrinks with it, as a group's does when an instance is terminated.
                self._desired = max(0, self._desired - 1)
            level = logging.INFO if code == 0 else logging.WARNING
            log.log(level, "%s: node %s exited (code %d)", self.name, node.id, code)
