"""A fleet harness: a real ``batchfarm node`` process for each member of an Auto Scaling group.

moto launches no machine, so :class:`FleetHarness` plays EC2 for one group on moto behind
our lifecycle endpoint (:mod:`tests.fleet.endpoint`). Following the members' states:

- a member that appears (``Pending:Wait`` or ``InService``) gets a metadata service of its
  own (:class:`~tests.fakes.imds.FakeImds`, target state ``InService``) and a node process
  named by its instance id, pointed at that metadata service and at the endpoint for its
  lifecycle calls (boto3's ``AWS_ENDPOINT_URL_AUTO_SCALING``);
- a member held in ``Terminating:Wait`` has its metadata say so (target state
  ``Terminated``), which a node still running drains on;
- a member ``Terminated`` whose node still runs after :data:`EXITING_S` is shut down as
  EC2 does: SIGTERM, then SIGKILL if the node is still there after :data:`SHUTDOWN_S`.

:attr:`FleetHarness.nodes` keeps every node it ran, with its exit code and whether it had
to be killed, for tests to check that each left cleanly.
"""

from __future__ import annotations

import re
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from batchfarm.actors.backends.fleet import (
    IN_SERVICE,
    LAUNCHING,
    PENDING_WAIT,
    TERMINATED,
    TERMINATING_HOOK,
    TERMINATING_WAIT,
)
from tests.fakes.imds import FakeImds
from tests.fleet.conftest import aws
from tests.fleet.endpoint import LifecycleEndpoint
from tests.node.nodeproc import NodeProcess, env_for

#: Seconds a node gets between its instance's end (SIGTERM) and SIGKILL.
SHUTDOWN_S = 10.0
#: Seconds a node whose instance went gets to exit by itself before the SIGTERM.
EXITING_S = 3.0
#: Seconds between looks at the members' states.
TICK_S = 0.1
#: Launch and termination hook names the harness's nodes are configured with.
LAUNCH_HOOK = "ready"
TERMINATE_HOOK = "drain"
#: Every state of a member that launched and left through both hooks.
FULL_LIFE = [PENDING_WAIT, IN_SERVICE, TERMINATING_WAIT, TERMINATED]
#: The handler that logs each run (:mod:`tests.fleet.handlers`).
RECORD = "tests.fleet.handlers:record"
_LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")


@dataclass
class FleetNode:
    """One member's machine: its metadata service and its node process."""

    instance: str
    imds: FakeImds
    process: NodeProcess
    #: The node's exit code once it ended (None while it runs).
    code: int | None = None
    #: Whether it was still running when its instance went, and had to be stopped.
    stopped: bool = False
    terminating: bool = False

    def output(self) -> str:
        return self.process.output()

    def drained_at(self) -> float | None:
        """When the node logged that it began to drain (epoch seconds), or None."""
        for line in self.output().splitlines():
            found = _LOG_TIME.match(line)
            if found and ": draining (grace" in line:
                when = datetime.strptime(found.group(1), "%Y-%m-%d %H:%M:%S,%f")
                return when.timestamp()  # the node logs local time, as this reads it
        return None


class FleetHarness:
    """Node processes for the members of ``group`` (see the module docstring).

    ``env`` holds the settings every node gets (``BATCHFARM_*``: queue, store, manager...);
    ``state`` is the grid's state folder (each node logs beside it, as ``<instance>.log``).
    """

    def __init__(
        self, endpoint: LifecycleEndpoint, group: str, state: Path, env: dict[str, str]
    ) -> None:
        self.endpoint = endpoint
        self.group = group
        self.state = state
        self.env = env
        self.nodes: dict[str, FleetNode] = {}
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="fleet-harness", daemon=True)
        self.errors: list[BaseException] = []

    def start(self) -> FleetHarness:
        self._thread.start()
        return self

    def node(self, instance: str) -> FleetNode:
        with self._lock:
            return self.nodes[instance]

    def by_pid(self) -> dict[int, str]:
        """Instance id of each node process, by its pid (a worker's parent)."""
        with self._lock:
            return {n.process.pid: n.instance for n in self.nodes.values()}

    def running(self) -> list[str]:
        """Instances whose node process still runs."""
        with self._lock:
            return [i for i, n in self.nodes.items() if n.process.proc.poll() is None]

    def close(self) -> None:
        """Stop following, and kill every node still there (a failed test leaves no stray)."""
        self._stop.set()
        self._thread.join(10)
        with self._lock:
            for node in self.nodes.values():
                node.process.close()
                node.imds.stop()

    def _run(self) -> None:
        while not self._stop.wait(TICK_S):
            try:
                self._follow()
            except Exception as error:  # a bug here must fail the test, not hang it
                self.errors.append(error)
                raise

    def _follow(self) -> None:
        for instance, state in self.endpoint.states(self.group).items():
            node = self.nodes.get(instance)
            if node is None and state in (PENDING_WAIT, IN_SERVICE):
                node = self._launch(instance)
            if node is None:
                continue
            if node.code is None:
                node.code = node.process.proc.poll()
            if state == TERMINATING_WAIT and not node.terminating:
                node.terminating = True
                node.imds.terminate()
            elif state == TERMINATED and node.code is None:
                self._shut_down(node)

    def _launch(self, instance: str) -> FleetNode:
        imds = FakeImds(instance_id=instance).start()
        imds.target_lifecycle(IN_SERVICE)
        env = {
            **self.env,
            **env_for(
                node_metadata_url=imds.url,
                node_metadata_poll=0.2,
                node_launch_hook=LAUNCH_HOOK,
                node_lifecycle_hook=TERMINATE_HOOK,
                node_autoscaling_group=self.group,
            ),
            "AWS_ENDPOINT_URL_AUTO_SCALING": self.endpoint.url,
        }
        node = FleetNode(instance, imds, NodeProcess(self.state, instance, env=env))
        with self._lock:
            self.nodes[instance] = node
        return node

    def _shut_down(self, node: FleetNode) -> None:
        """The instance went while its node still ran: stop it as an OS shutdown does.

        A node that completed its termination hook is exiting already: it gets a moment to.
        """
        deadline = time.monotonic() + EXITING_S
        while node.process.proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        if node.process.proc.poll() is None:
            node.stopped = True
            node.process.signal(signal.SIGTERM)
        deadline = time.monotonic() + SHUTDOWN_S
        while node.process.proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        if node.process.proc.poll() is None:
            node.process.close()  # SIGKILL, the whole tree
        node.code = node.process.proc.poll()


def put_hooks(
    endpoint: LifecycleEndpoint,
    group: str,
    *,
    launch: tuple[float, str] | None = None,
    terminate: tuple[float, str] | None = None,
) -> None:
    """Put the launch and/or the termination hook, each ``(heartbeat timeout, default result)``."""
    client = aws("autoscaling", endpoint.url)
    for name, transition, spec in (
        (LAUNCH_HOOK, LAUNCHING, launch),
        (TERMINATE_HOOK, TERMINATING_HOOK, terminate),
    ):
        if spec is not None:
            client.put_lifecycle_hook(
                AutoScalingGroupName=group,
                LifecycleHookName=name,
                LifecycleTransition=transition,
                HeartbeatTimeout=int(spec[0]),
                DefaultResult=spec[1],
            )
    client.close()


def hooked_group(
    endpoint: LifecycleEndpoint,
    make_group: Callable[..., str],
    *,
    minimum: int,
    maximum: int,
    terminate_timeout: int,
    terminate_default: str = "ABANDON",
) -> str:
    """A group with a launch and a termination hook; ``minimum`` members launched after them."""
    group = make_group(min=0, max=maximum, desired=0)
    put_hooks(
        endpoint, group, launch=(60, "ABANDON"), terminate=(terminate_timeout, terminate_default)
    )
    client = aws("autoscaling", endpoint.url)
    client.update_auto_scaling_group(
        AutoScalingGroupName=group, MinSize=minimum, DesiredCapacity=minimum
    )
    client.close()
    return group


def group_desired(endpoint: LifecycleEndpoint, group: str) -> int:
    client = aws("autoscaling", endpoint.url)
    (info,) = client.describe_auto_scaling_groups(AutoScalingGroupNames=[group])[
        "AutoScalingGroups"
    ]
    client.close()
    return int(info["DesiredCapacity"])


def in_service(endpoint: LifecycleEndpoint, group: str) -> list[str]:
    return [i for i, s in endpoint.states(group).items() if s == IN_SERVICE]
