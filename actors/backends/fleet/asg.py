"""The fleet as an EC2 Auto Scaling group, through boto3.

Our code checks what AWS would refuse, and moto would not: the desired capacity is clamped
to the group's min and max, and a member is terminated only if it belongs to this group
(TerminateInstanceInAutoScalingGroup takes no group name) and the desired capacity may go
down by one. Errors name the group and the action; retrying is botocore's standard mode.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from batchfarm.actors.backends.aws import backend_error, client
from batchfarm.actors.backends.fleet import (
    ABANDON,
    CONTINUE,
    Fleet,
    FleetError,
    FleetState,
    Instance,
    LifecycleHook,
)

log = logging.getLogger(__name__)

#: IAM actions the manager's autoscaler needs on the group (see config/iam/).
MANAGER_ACTIONS = (
    "autoscaling:DescribeAutoScalingGroups",
    "autoscaling:SetDesiredCapacity",
    "autoscaling:SetInstanceProtection",
    "autoscaling:TerminateInstanceInAutoScalingGroup",
    # Releasing a drained member from the termination hook (its node has exited).
    "autoscaling:DescribeLifecycleHooks",
    "autoscaling:CompleteLifecycleAction",
)
#: IAM actions a node needs to join and leave the group gracefully (its own lifecycle
#: actions, and the hook's timeout, which its heartbeats must beat).
NODE_ACTIONS = (
    "autoscaling:CompleteLifecycleAction",
    "autoscaling:RecordLifecycleActionHeartbeat",
    "autoscaling:DescribeLifecycleHooks",
)
#: A hook's heartbeat timeout when AWS does not say (its documented default).
DEFAULT_HEARTBEAT_S = 3600.0
#: Most instance ids one SetInstanceProtection call takes (AWS's limit).
MAX_PROTECT_BATCH = 50


class AsgFleet(Fleet):
    """An EC2 Auto Scaling group, by name (see the module docstring)."""

    def __init__(self, group: str, *, region: str = "", endpoint_url: str = "") -> None:
        self.group = group
        self.name = f"Auto Scaling group {group!r}"
        self._client = client("autoscaling", region=region, endpoint_url=endpoint_url)

    def __repr__(self) -> str:
        return f"AsgFleet({self.group!r})"

    def state(self) -> FleetState:
        """The group's capacity and members, from one DescribeAutoScalingGroups call."""
        response = self._call(
            "DescribeAutoScalingGroups",
            self._client.describe_auto_scaling_groups,
            AutoScalingGroupNames=[self.group],
        )
        groups = response.get("AutoScalingGroups", [])
        if not groups:
            region = self._client.meta.region_name
            raise FleetError(
                f"{self.name}: DescribeAutoScalingGroups found no such group in {region}"
            )
        group = groups[0]
        return FleetState(
            desired=int(group["DesiredCapacity"]),
            min=int(group["MinSize"]),
            max=int(group["MaxSize"]),
            instances=tuple(_instance(item) for item in group.get("Instances", [])),
        )

    def set_desired(self, desired: int) -> int:
        """Set the desired capacity within the group's min and max; returns what was set."""
        state = self.state()
        applied = state.clamp(desired)
        if applied != desired:
            log.info(
                "%s: desired capacity %d clamped to %d (min %d, max %d)",
                *(self.name, desired, applied, state.min, state.max),
            )
        if applied == state.desired:
            return applied
        self._call(
            "SetDesiredCapacity",
            self._client.set_desired_capacity,
            AutoScalingGroupName=self.group,
            DesiredCapacity=applied,
            HonorCooldown=False,
        )
        return applied

    def protect(self, instance_ids: Sequence[str], protected: bool = True) -> None:
        """Set or clear scale-in protection, 50 members a call; every id must be a member."""
        if not instance_ids:
            return
        members = {i.id for i in self.state().instances}
        strangers = sorted(set(instance_ids) - members)
        if strangers:
            raise FleetError(
                f"{self.name}: SetInstanceProtection: not members of the group: "
                + ", ".join(strangers)
            )
        ids = list(dict.fromkeys(instance_ids))
        for start in range(0, len(ids), MAX_PROTECT_BATCH):
            self._call(
                "SetInstanceProtection",
                self._client.set_instance_protection,
                AutoScalingGroupName=self.group,
                InstanceIds=ids[start : start + MAX_PROTECT_BATCH],
                ProtectedFromScaleIn=protected,
            )

    def terminate(self, instance_id: str) -> None:
        """Terminate a member and decrement the desired capacity (see :meth:`Fleet.terminate`)."""
        action = "TerminateInstanceInAutoScalingGroup"
        state = self.state()
        if state.instance(instance_id) is None:
            raise FleetError(f"{self.name}: {action}: {instance_id} is not a member of the group")
        if state.desired <= state.min:
            raise FleetError(
                f"{self.name}: {action} {instance_id}: the desired capacity ({state.desired})"
                f" is the group's min ({state.min}), so it cannot go down"
            )
        self._call(
            action,
            self._client.terminate_instance_in_auto_scaling_group,
            InstanceId=instance_id,
            ShouldDecrementDesiredCapacity=True,
        )

    def complete_lifecycle(
        self, instance_id: str, hook: str, result: str = CONTINUE, token: str = ""
    ) -> None:
        """Complete the lifecycle action holding ``instance_id`` at hook ``hook``."""
        if result not in (CONTINUE, ABANDON):
            raise FleetError(
                f"{self.name}: CompleteLifecycleAction: result {result!r} is not"
                f" {CONTINUE!r} or {ABANDON!r}"
            )
        self._call(
            "CompleteLifecycleAction",
            self._client.complete_lifecycle_action,
            **_lifecycle_args(self.group, instance_id, hook, token),
            LifecycleActionResult=result,
        )

    def lifecycle_heartbeat(self, instance_id: str, hook: str, token: str = "") -> None:
        """Record a heartbeat for the lifecycle action holding ``instance_id``."""
        self._call(
            "RecordLifecycleActionHeartbeat",
            self._client.record_lifecycle_action_heartbeat,
            **_lifecycle_args(self.group, instance_id, hook, token),
        )

    def hooks(self) -> tuple[LifecycleHook, ...]:
        """The group's lifecycle hooks, from one DescribeLifecycleHooks call."""
        response = self._call(
            "DescribeLifecycleHooks",
            self._client.describe_lifecycle_hooks,
            AutoScalingGroupName=self.group,
        )
        return tuple(
            LifecycleHook(
                name=str(item["LifecycleHookName"]),
                transition=str(item.get("LifecycleTransition", "")),
                heartbeat_timeout=float(item.get("HeartbeatTimeout", DEFAULT_HEARTBEAT_S)),
                default_result=str(item.get("DefaultResult", ABANDON)),
            )
            for item in response.get("LifecycleHooks", [])
        )

    def close(self) -> None:
        """Close the client's connections."""
        self._client.close()

    def _call(self, action: str, method: Callable[..., Any], **kwargs: Any) -> Any:
        # Transient errors were already retried by botocore; what is left will not pass.
        try:
            return method(**kwargs)
        except Exception as exc:
            raise backend_error(exc, action=action, resource=self.name, kind=FleetError) from exc


def _instance(item: dict[str, Any]) -> Instance:
    return Instance(
        id=str(item["InstanceId"]),
        lifecycle_state=str(item.get("LifecycleState", "")),
        health=str(item.get("HealthStatus", "")),
        protected_from_scale_in=bool(item.get("ProtectedFromScaleIn", False)),
        instance_type=str(item.get("InstanceType", "")),
        zone=str(item.get("AvailabilityZone", "")),
    )


def _lifecycle_args(group: str, instance_id: str, hook: str, token: str) -> dict[str, str]:
    # AWS identifies the action by the instance id or by the token the hook's notification
    # carried; either is enough.
    args = {"AutoScalingGroupName": group, "LifecycleHookName": hook, "InstanceId": instance_id}
    if token:
        args["LifecycleActionToken"] = token
    return args
