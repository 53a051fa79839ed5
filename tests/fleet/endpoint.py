"""An Auto Scaling endpoint of our own in front of moto: the lifecycle moto lacks.

moto stores lifecycle hooks but never enforces them (its instances are ``InService`` at once
and vanish at once), and it answers CompleteLifecycleAction and RecordLifecycleActionHeartbeat
with HTTP 500. This server forwards every request to moto, so boto3 still goes over HTTP for
everything, and adds what AWS does with hooks (lifecycle-hooks-overview.html):

- a group is *tracked* once a hook is put on it through this endpoint (PutLifecycleHook); the
  members it had then stay ``InService``;
- a member moto launches later waits in ``Pending:Wait`` while a launch hook
  (``autoscaling:EC2_INSTANCE_LAUNCHING``) holds it, then goes ``InService`` on CONTINUE;
  ABANDON terminates it (moto launches a replacement, as AWS does);
- a member moto removes (TerminateInstanceInAutoScalingGroup, a lower desired capacity)
  stays listed in ``Terminating:Wait`` while a termination hook holds it, then goes
  ``Terminated`` on CONTINUE or ABANDON;
- RecordLifecycleActionHeartbeat restarts the hook's HeartbeatTimeout; when it runs out, or
  the global timeout (100 heartbeat timeouts) does, the hook's DefaultResult applies. AWS's
  minimum timeout is 30 s; this endpoint takes any, so tests can use a few seconds.

Describe calls show the modelled state (moto's answer, rewritten). :attr:`history` keeps
each member's states in order, with what caused each, for tests to assert the sequence.
A test may also hold any member by hand (:meth:`hold`, no timeout), and ``deny`` makes an
action answer AccessDenied, as a policy without it would.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs

import boto3
import httpx

from batchfarm.actors.backends.fleet import (
    ABANDON,
    CONTINUE,
    IN_SERVICE,
    LAUNCHING,
    PENDING_WAIT,
    TERMINATED,
    TERMINATING_HOOK,
    TERMINATING_WAIT,
)
from tests.aws import REGION

log = logging.getLogger(__name__)

_NS = "http://autoscaling.amazonaws.com/doc/2011-01-01/"
ET.register_namespace("", _NS)
LIFECYCLE_ACTIONS = ("CompleteLifecycleAction", "RecordLifecycleActionHeartbeat")
#: Seconds between checks of timeouts and of moto's members.
TICK_S = 0.1
#: The global timeout, in heartbeat timeouts (AWS: 100 of them, at most 48 h).
GLOBAL_TIMEOUTS = 100
# Hop-by-hop and length headers the forwarding client sets itself.
_DROP = {"host", "content-length", "connection", "transfer-encoding"}
_DESCRIBES = ("DescribeAutoScalingGroups", "DescribeAutoScalingInstances")


@dataclass(frozen=True)
class Hook:
    """A lifecycle hook put on a group through the endpoint."""

    group: str
    name: str
    transition: str
    heartbeat_timeout: float
    default_result: str


@dataclass
class Action:
    """A lifecycle action: one hook holding one member until it is completed or times out."""

    group: str
    hook: str
    instance: str
    #: None for a hold a test made by hand (no hook, no timeout).
    spec: Hook | None
    token: str = field(default_factory=lambda: str(uuid.uuid4()))
    started: float = field(default_factory=time.monotonic)
    deadline: float = float("inf")
    heartbeats: int = 0

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.group, self.hook, self.instance)


@dataclass(frozen=True)
class Transition:
    """A member entered ``state`` at ``at`` (monotonic seconds) because of ``cause``."""

    state: str
    cause: str
    at: float
    #: The same moment in epoch seconds, to compare with what other processes logged.
    wall: float


@dataclass
class LifecycleEndpoint:
    """The running endpoint: its URL, the calls it answered and each member's lifecycle."""

    upstream: str
    url: str = ""
    #: Every lifecycle call answered, as ``(action, {param: value})``.
    calls: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    #: Each member's states in order (tracked groups and hand-held members).
    history: dict[str, list[Transition]] = field(default_factory=dict)
    denied: set[str] = field(default_factory=set)
    _actions: dict[tuple[str, str, str], Action] = field(default_factory=dict)
    _hooks: dict[str, dict[str, Hook]] = field(default_factory=dict)
    #: Per tracked group: each member moto listed, as its last Describe showed it.
    _members: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    _states: dict[str, str] = field(default_factory=dict)
    _server: ThreadingHTTPServer | None = None
    _http: httpx.Client | None = None
    _moto: Any = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.RLock = field(default_factory=threading.RLock)

    # -- what tests read and do -----------------------------------------------------------

    @property
    def held(self) -> set[tuple[str, str, str]]:
        """``(group, hook, instance id)`` of the lifecycle actions waiting now."""
        with self._lock:
            return set(self._actions)

    def state(self, instance_id: str) -> str | None:
        """The member's lifecycle state as modelled (None if never seen)."""
        with self._lock:
            return self._states.get(instance_id)

    def states(self, group: str) -> dict[str, str]:
        """Every member of a tracked group ever seen, with its state (Terminated ones too)."""
        with self._lock:
            return {i: self._states[i] for i in self._members.get(group, {})}

    def sequence(self, instance_id: str) -> list[str]:
        """The states the member went through, in order."""
        with self._lock:
            return [t.state for t in self.history.get(instance_id, [])]

    def action(self, group: str, hook: str, instance_id: str) -> Action | None:
        """The waiting action of ``hook`` on the member, if any."""
        with self._lock:
            return self._actions.get((group, hook, instance_id))

    def hold(self, group: str, hook: str, instance_id: str) -> None:
        """Hold a member at a hook by hand (no timeout), as AWS does on a wait state."""
        with self._lock:
            self._actions[(group, hook, instance_id)] = Action(group, hook, instance_id, None)

    def deny(self, action: str) -> None:
        """Answer ``action`` with AccessDenied from now on."""
        self.denied.add(action)

    # -- the lifecycle actions --------------------------------------------------------------

    def answer(self, params: dict[str, str]) -> tuple[int, str]:
        """The status and XML body AWS would send for a lifecycle call."""
        name = params.get("Action", "")
        if name in self.denied:
            return 403, _error(
                "AccessDenied", f"User is not authorized to perform: autoscaling:{name}"
            )
        key = (
            params.get("AutoScalingGroupName", ""),
            params.get("LifecycleHookName", ""),
            params.get("InstanceId", ""),
        )
        with self._lock:
            self.calls.append((name, params))
            action = self._actions.get(key)
            if action is None:
                return 400, _error(
                    "ValidationError", f"No active Lifecycle Action found with instance ID {key[2]}"
                )
            if name == "CompleteLifecycleAction":
                result = params.get("LifecycleActionResult", "")
                if result not in (CONTINUE, ABANDON):
                    return 400, _error("ValidationError", f"bad LifecycleActionResult {result!r}")
                self._complete(action, result, f"{name} {result}")
            else:
                action.heartbeats += 1
                if action.spec is not None:
                    action.deadline = time.monotonic() + action.spec.heartbeat_timeout
        return 200, (
            f'<{name}Response xmlns="{_NS}"><{name}Result/>'
            f"<ResponseMetadata><RequestId>{uuid.uuid4()}</RequestId></ResponseMetadata>"
            f"</{name}Response>"
        )

    def _complete(self, action: Action, result: str, cause: str) -> None:
        """End ``action`` with ``result`` and move its member on (under the lock)."""
        self._actions.pop(action.key, None)
        if action.spec is None:
            return
        member = action.instance
        waiting = [a for a in self._actions.values() if a.instance == member]
        if action.spec.transition == LAUNCHING:
            if result == ABANDON:
                for other in waiting:
                    self._actions.pop(other.key, None)
                self._enter(member, TERMINATED, cause)
                # AWS terminates an abandoned launch and launches a replacement.
                self._moto.terminate_instance_in_auto_scaling_group(
                    InstanceId=member, ShouldDecrementDesiredCapacity=False
                )
            elif not waiting:
                self._enter(member, IN_SERVICE, cause)
        elif result == ABANDON or not waiting:
            # On the way out, ABANDON ends the other hooks' waits too.
            for other in waiting:
                self._actions.pop(other.key, None)
            self._enter(member, TERMINATED, cause)

    def _enter(self, member: str, state: str, cause: str) -> None:
        self._states[member] = state
        self.history.setdefault(member, []).append(
            Transition(state, cause, time.monotonic(), time.time())
        )

    def _expire(self) -> None:
        """Apply the default result of every action whose timeout ran out."""
        now = time.monotonic()
        with self._lock:
            for action in list(self._actions.values()):
                spec = action.spec
                if spec is None or action.key not in self._actions:
                    continue
                overall = action.started + GLOBAL_TIMEOUTS * spec.heartbeat_timeout
                if now >= min(action.deadline, overall):
                    self._complete(action, spec.default_result, f"timeout {spec.default_result}")

    # -- following moto's members -----------------------------------------------------------

    def _track(self, params: dict[str, str]) -> None:
        """Take a hook put through the endpoint (the group's members so far stay as they are)."""
        group = params["AutoScalingGroupName"]
        with self._lock:
            if group not in self._hooks:
                self._hooks[group] = {}
                self._members[group] = {}
                self._sync(group, hooked=False)
            hook = Hook(
                group=group,
                name=params["LifecycleHookName"],
                transition=params.get("LifecycleTransition", ""),
                heartbeat_timeout=float(params.get("HeartbeatTimeout", 3600)),
                default_result=params.get("DefaultResult", ABANDON),
            )
            self._hooks[group][hook.name] = hook

    def _sync(self, group: str, hooked: bool = True) -> None:
        """Compare moto's members with the ones seen before; hooks catch the new and the gone."""
        # Under the lock from the read on: an older read applied after a newer one would
        # take a member just launched for one just removed.
        with self._lock:
            found = self._moto.describe_auto_scaling_groups(AutoScalingGroupNames=[group])
            listed = {
                i["InstanceId"]: i
                for g in found.get("AutoScalingGroups", [])
                for i in g.get("Instances", [])
            }
            known = self._members.setdefault(group, {})
            hooks = self._hooks.get(group, {}).values() if hooked else ()
            for member, info in listed.items():
                if member in known:
                    known[member] = info
                    continue
                known[member] = info
                launching = [h for h in hooks if h.transition == LAUNCHING]
                self._enter(member, PENDING_WAIT if launching else IN_SERVICE, "launched")
                self._wait(member, launching)
            for member in known:
                if member in listed or self._states.get(member) in (TERMINATING_WAIT, TERMINATED):
                    continue
                terminating = [h for h in hooks if h.transition == TERMINATING_HOOK]
                self._enter(member, TERMINATING_WAIT if terminating else TERMINATED, "removed")
                self._wait(member, terminating)

    def _wait(self, member: str, hooks: list[Hook]) -> None:
        for hook in hooks:
            action = Action(hook.group, hook.name, member, hook)
            action.deadline = action.started + hook.heartbeat_timeout
            self._actions[action.key] = action

    def _run(self) -> None:
        while not self._stop.wait(TICK_S):
            try:
                for group in list(self._hooks):
                    self._sync(group)
                self._expire()
            except Exception:  # moto going down at the end of a run, or a bug to see in the log
                if not self._stop.is_set():
                    log.exception("lifecycle endpoint: following moto failed")

    # -- rewriting moto's Describe answers ----------------------------------------------------

    def _rewrite(self, body: bytes) -> bytes:
        """moto's Describe answer with our states, and the members held on their way out."""
        root = ET.fromstring(body)
        with self._lock:
            for item in root.iter(f"{{{_NS}}}member"):
                member = item.findtext(f"{{{_NS}}}InstanceId")
                state = item.find(f"{{{_NS}}}LifecycleState")
                if member is not None and state is not None and member in self._states:
                    state.text = self._states[member]
            groups = [
                (group, instances)
                for item in root.iter(f"{{{_NS}}}member")
                if (group := item.findtext(f"{{{_NS}}}AutoScalingGroupName")) is not None
                and (instances := item.find(f"{{{_NS}}}Instances")) is not None
            ]
            for group, instances in groups:
                for member, info in self._members.get(group, {}).items():
                    if self._states.get(member) == TERMINATING_WAIT:
                        instances.append(_member_xml(info, TERMINATING_WAIT))
        return ET.tostring(root, encoding="utf-8", xml_declaration=True)

    # -- serving ----------------------------------------------------------------------------

    def start(self) -> None:
        """Serve on a free loopback port in a thread, and follow moto in another."""
        endpoint = self
        client = self._http = httpx.Client(base_url=self.upstream, timeout=30.0)
        self._moto = boto3.client("autoscaling", region_name=REGION, endpoint_url=self.upstream)

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                params = {k: v[0] for k, v in parse_qs(body.decode()).items()}
                name = params.get("Action", "")
                if name in LIFECYCLE_ACTIONS:
                    status, text = endpoint.answer(params)
                    self._reply(status, text.encode(), "text/xml")
                    return
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _DROP}
                upstream = client.post(self.path, content=body, headers=headers)
                content = upstream.content
                if upstream.status_code == 200:
                    if name == "PutLifecycleHook":
                        endpoint._track(params)
                    for group in list(endpoint._hooks):
                        endpoint._sync(group)  # what this call launched or removed
                    if name in _DESCRIBES:
                        content = endpoint._rewrite(content)
                self._reply(
                    upstream.status_code, content, upstream.headers.get("content-type", "text/xml")
                )

            def _reply(self, status: int, body: bytes, content_type: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        threading.Thread(target=self._run, name="lifecycle-endpoint", daemon=True).start()

    def stop(self) -> None:
        """Stop serving."""
        self._stop.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._http is not None:
            self._http.close()
        if self._moto is not None:
            self._moto.close()


def _member_xml(info: dict[str, Any], state: str) -> ET.Element:
    """An ``Instances`` member as AWS lists it, from what moto last said of it."""
    item = ET.Element(f"{{{_NS}}}member")
    fields = {
        "InstanceId": info["InstanceId"],
        "InstanceType": info.get("InstanceType", ""),
        "AvailabilityZone": info.get("AvailabilityZone", ""),
        "LifecycleState": state,
        "HealthStatus": info.get("HealthStatus", "Healthy"),
        "ProtectedFromScaleIn": str(bool(info.get("ProtectedFromScaleIn"))).lower(),
    }
    for name, value in fields.items():
        ET.SubElement(item, f"{{{_NS}}}{name}").text = value
    return item


def _error(code: str, message: str) -> str:
    return (
        f'<ErrorResponse xmlns="{_NS}"><Error><Type>Sender</Type><Code>{code}</Code>'
        f"<Message>{message}</Message></Error><RequestId>{uuid.uuid4()}</RequestId>"
        "</ErrorResponse>"
    )
