"""The fleet: the group of worker machines the grid grows and shrinks.

A :class:`Fleet` is one group of worker nodes (on AWS, one EC2 Auto Scaling group; later a
pool of local ``batchfarm node`` processes). It reads the group's capacity and members,
sets the desired capacity (always clamped to the group's min and max by our code: moto
accepts more than the max, AWS refuses it), protects busy members from scale-in, removes a
drained member while lowering the desired capacity, and completes the lifecycle actions that
hold a member in ``Pending:Wait`` or ``Terminating:Wait`` (:meth:`Fleet.release` for a member
whose node is gone).

The autoscaler (the manager) uses the capacity, protection and termination calls; a node
uses the lifecycle calls on its own instance. :func:`open_fleet` opens one from a URL.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType
from urllib.parse import urlsplit

from batchfarm.actors.errors import BackendError

log = logging.getLogger(__name__)

#: Lifecycle states of a member, as AWS names them (others exist: warm pools, detaching).
PENDING = "Pending"
PENDING_WAIT = "Pending:Wait"
IN_SERVICE = "InService"
STANDBY = "Standby"
TERMINATING = "Terminating"
TERMINATING_WAIT = "Terminating:Wait"
TERMINATED = "Terminated"
#: The results a lifecycle action may complete with: go on, or give the instance up.
CONTINUE = "CONTINUE"
ABANDON = "ABANDON"
#: The transitions a lifecycle hook holds a member at.
LAUNCHING = "autoscaling:EC2_INSTANCE_LAUNCHING"
TERMINATING_HOOK = "autoscaling:EC2_INSTANCE_TERMINATING"


class FleetError(BackendError):
    """The fleet refused or failed a call (a missing group, access denied, a bad request)."""


@dataclass(frozen=True)
class Instance:
    """One member of the fleet as the group reports it."""

    id: str
    #: Where the member is in its life (``InService``, ``Terminating:Wait``, ...).
    lifecycle_state: str
    #: ``Healthy`` or ``Unhealthy``.
    health: str
    #: Whether scale-in may choose this member.
    protected_from_scale_in: bool
    #: The machine type (``c7g.4xlarge``), for pricing; ``""`` if unknown.
    instance_type: str = ""
    #: The availability zone, ``""`` if unknown.
    zone: str = ""

    @property
    def in_service(self) -> bool:
        """Whether the member is up and may take work."""
        return self.lifecycle_state == IN_SERVICE


@dataclass(frozen=True)
class LifecycleHook:
    """A lifecycle hook of the group: it holds members at one transition until completed."""

    name: str
    #: :data:`LAUNCHING` (``Pending:Wait``) or :data:`TERMINATING_HOOK` (``Terminating:Wait``).
    transition: str
    #: Seconds the hook waits without a completion or a heartbeat before its default result.
    heartbeat_timeout: float
    #: ``CONTINUE`` or ``ABANDON``: what the timeout does.
    default_result: str


@dataclass(frozen=True)
class FleetState:
    """The group's capacity and its members, read in one call."""

    desired: int
    min: int
    max: int
    instances: tuple[Instance, ...]

    def clamp(self, desired: int) -> int:
        """``desired`` brought within the group's min and max."""
        return max(self.min, min(self.max, desired))

    @property
    def in_service(self) -> tuple[Instance, ...]:
        """The members that are up."""
        return tuple(i for i in self.instances if i.in_service)

    def instance(self, instance_id: str) -> Instance | None:
        """The member with this id, or None if the group has no such member."""
        return next((i for i in self.instances if i.id == instance_id), None)


class Fleet(ABC):
    """One group of worker machines (see the module docstring)."""

    #: The group as messages name it: ``Auto Scaling group 'batchfarm-workers'``.
    name: str

    @abstractmethod
    def state(self) -> FleetState:
        """The group's desired, min and max capacity and its members."""

    @abstractmethod
    def set_desired(self, desired: int) -> int:
        """Ask for ``desired`` members, clamped to the group's min and max; returns what was set."""

    @abstractmethod
    def protect(self, instance_ids: Sequence[str], protected: bool = True) -> None:
        """Set (or clear) scale-in protection on members, so scale-in picks only idle ones."""

    @abstractmethod
    def terminate(self, instance_id: str) -> None:
        """Remove a (drained) member and lower the desired capacity by one.

        Refused with :class:`FleetError` when the member is not in this group or when the
        desired capacity is already the group's min (AWS would then launch a replacement).
        """

    @abstractmethod
    def complete_lifecycle(
        self, instance_id: str, hook: str, result: str = CONTINUE, token: str = ""
    ) -> None:
        """Let a member held at hook ``hook`` go on (``CONTINUE``) or not (``ABANDON``)."""

    @abstractmethod
    def lifecycle_heartbeat(self, instance_id: str, hook: str, token: str = "") -> None:
        """Restart the hook's timeout for a member still draining (it holds for longer)."""

    def hooks(self) -> tuple[LifecycleHook, ...]:
        """The group's lifecycle hooks (none for a fleet without them)."""
        return ()

    def release(self, instance_id: str) -> bool:
        """Let a terminated member whose node is gone go: complete its termination hooks.

        A drained node has exited by the time it is terminated, so nobody else would, and
        the member would wait out the hook's timeout. True once nothing holds the member
        (it is gone, or the group has no termination hook); False while it is not yet in
        ``Terminating:Wait`` (call again later). Raises :class:`FleetError` when no hook
        could be completed.
        """
        hooks = [h.name for h in self.hooks() if h.transition == TERMINATING_HOOK]
        member = self.state().instance(instance_id) if hooks else None
        if member is None or member.lifecycle_state == TERMINATED:
            return True
        if member.lifecycle_state != TERMINATING_WAIT:
            return False
        errors = []
        for hook in hooks:
            try:
                self.complete_lifecycle(instance_id, hook, CONTINUE)
                log.info(
                    "%s: %s released from termination hook %r (CONTINUE)",
                    *(self.name, instance_id, hook),
                )
            except FleetError as error:  # that hook may not hold it (already completed)
                errors.append(error)
        if len(errors) == len(hooks):
            raise errors[0]
        return True

    def close(self) -> None:  # noqa: B027 (a hook: most fleets hold nothing to release)
        """Release what the fleet holds."""

    def __enter__(self) -> Fleet:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def release_all(fleet: Fleet, members: set[str]) -> None:
    """:meth:`Fleet.release` each member; those released (or that failed) leave ``members``.

    A failure is logged, not raised: the hook's timeout applies its default result anyway.
    """
    for member in sorted(members):
        try:
            done = fleet.release(member)
        except FleetError as error:
            log.warning(
                "%s: member %s not released from its termination hook: %s",
                *(fleet.name, member, error),
            )
            done = True
        if done:
            members.discard(member)


def open_fleet(url: str, region: str = "", endpoint_url: str = "") -> Fleet:
    """Open the fleet at ``url``: ``asg://GROUP-NAME`` (an EC2 Auto Scaling group).

    ``region`` and ``endpoint_url`` may be empty: boto3's chain then picks the region, and
    the calls go to AWS itself.
    """
    parts = urlsplit(url)
    if parts.scheme == "asg":
        if not parts.netloc or parts.path not in ("", "/") or parts.query or parts.fragment:
            raise FleetError(f"fleet URL {url!r}: expected asg://GROUP-NAME")
        # Imported here: only a grid on AWS loads boto3.
        from batchfarm.actors.backends.fleet.asg import AsgFleet  # noqa: PLC0415

        return AsgFleet(parts.netloc, region=region, endpoint_url=endpoint_url)
    if parts.scheme == "local":  # local://?min=0&max=4: batchfarm node processes, here
        from batchfarm.actors.backends.fleet.local import LocalFleet  # noqa: PLC0415

        return LocalFleet.from_url(url)
    raise FleetError(f"fleet URL {url!r}: no {parts.scheme}:// fleet (expected asg://GROUP-NAME)")
