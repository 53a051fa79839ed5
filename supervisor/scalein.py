"""The node's side of an EC2 fleet's lifecycle: joining it, and leaving it without losing work.

:class:`ScaleIn` watches the instance metadata service (:mod:`batchfarm.supervisor.imds`)
and turns each notice into the grace a drain gets: a spot interruption's time less a margin
to hand messages back, else ``[node] drain_grace``. Through the Auto Scaling group's
lifecycle hooks (AWS holds a member at a hook until told, or until the hook's heartbeat
timeout applies its default result):

- **launch** (``[node] launch_hook``): once the node's workers are up and can take tasks, it
  completes the hook (CONTINUE), so the instance goes ``InService`` no sooner;
- **termination** (``[node] lifecycle_hook``): when Auto Scaling chose the instance for
  scale-in, the node drains, recording a lifecycle heartbeat every third of the hook's
  heartbeat timeout while its tasks run, then completes the hook (CONTINUE), so the
  instance goes at once instead of waiting out the timeout, and never while a task runs.

The lifecycle calls run on a thread of their own, so the node's loop (and its heartbeats to
the manager) never waits on AWS; :meth:`ScaleIn.stop` waits for the last one. A failed call
is logged, not raised: the hook's timeout applies its default result anyway.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from batchfarm.actors.backends.fleet import (
    CONTINUE,
    TERMINATING_HOOK,
    Fleet,
    FleetError,
    open_fleet,
)
from batchfarm.actors.settings.model import NodeSettings
from batchfarm.supervisor.imds import MetadataClient, MetadataError, Notice, NoticeWatcher

log = logging.getLogger(__name__)

#: Seconds kept before a spot interruption's time to stop tasks and hand their messages back.
HANDBACK_S = 15.0
#: The instance tag Auto Scaling puts on its members (readable when metadata tags are on).
GROUP_TAG = "tags/instance/aws:autoscaling:groupName"
#: Heartbeats per heartbeat timeout while a drain holds the instance in Terminating:Wait:
#: three, so one late or failed call still leaves time for the next.
BEATS_PER_TIMEOUT = 3


@dataclass
class _Group:
    """This instance's Auto Scaling group, as the metadata service names it."""

    instance: str
    name: str
    fleet: Fleet


class ScaleIn:
    """Notices from the metadata service, and the lifecycle actions of this instance."""

    def __init__(self, settings: NodeSettings) -> None:
        self.settings = settings
        self.watcher = NoticeWatcher(settings.metadata_url, settings.metadata_poll)
        self.terminating = False
        #: Whether the launch hook was completed (or tried: it is tried once).
        self.launched = False
        self._group: _Group | None = None
        self._looked_up = False
        self._beat_every: float | None = None
        self._next_beat = 0.0
        # The calls go to AWS from a thread of their own: a first boto3 client takes a
        # second or more to make, and the node's loop must not miss heartbeats meanwhile.
        # One thread, so the calls keep their order and the state above needs no lock.
        self._calls = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lifecycle")
        self._beating: Future[None] | None = None
        self._left = False

    def start(self) -> None:
        """Start watching."""
        self.watcher.start()

    def stop(self) -> None:
        """Stop watching; wait for the lifecycle calls under way (the last completion)."""
        self.watcher.stop()
        self._calls.shutdown(wait=True)
        if self._group is not None:
            self._group.fleet.close()

    def take(self) -> list[tuple[Notice, float]]:
        """New notices, each with the seconds of grace running tasks get."""
        taken = []
        for notice in self.watcher.take():
            if notice.kind == "terminating":
                self.terminating = True
            taken.append((notice, self.grace_for(notice)))
        return taken

    def grace_for(self, notice: Notice) -> float:
        """Seconds running tasks may go on: up to a margin before the instance stops."""
        grace = self.settings.drain_grace
        if notice.deadline is not None:
            grace = min(grace, notice.deadline - time.time() - HANDBACK_S)
        return max(0.0, grace)

    def tick(self, ready: bool) -> None:
        """The lifecycle calls due now (called every second or so).

        Completes the launch hook once ``ready`` (the workers take tasks), and records
        heartbeats while a drain holds the instance at its termination hook.
        """
        if ready and not self.launched and self.settings.launch_hook:
            self.launched = True
            self._call(self._complete, self.settings.launch_hook)
        hook = self.settings.lifecycle_hook
        beating = self._beating is not None and not self._beating.done()
        if self.terminating and hook and not self._left and not beating:
            self._beating = self._call(self._heartbeat, hook)

    def drained(self) -> None:
        """The node drained: let Auto Scaling terminate the instance now, if it waits on us."""
        hook = self.settings.lifecycle_hook
        if self.terminating and hook and not self._left:
            self._left = True  # no heartbeat after the completion
            self._call(self._complete, hook)

    def _call(self, call: Callable[[str], None], hook: str) -> Future[None]:
        """Run ``call(hook)`` on the lifecycle thread; an error there is logged."""

        def run() -> None:
            try:
                call(hook)
            except Exception:  # a bug: log it, the node goes on (the hook's timeout applies)
                log.exception("lifecycle hook %r: the call failed", hook)

        return self._calls.submit(run)

    def _complete(self, hook: str) -> None:
        group = self._lookup(hook)
        if group is None:
            return
        try:
            group.fleet.complete_lifecycle(group.instance, hook, CONTINUE)
        except FleetError as error:
            log.error("lifecycle hook %r: could not complete it: %s", hook, error)
            return
        log.info(
            "lifecycle hook %r: completed (CONTINUE) for %s in %s", hook, group.instance, group.name
        )

    def _heartbeat(self, hook: str) -> None:
        """Record a heartbeat each third of the hook's timeout (read from the group once)."""
        group = self._lookup(hook)
        if group is None:
            return
        now = time.monotonic()
        if self._beat_every is None:
            try:
                timeouts = [h.heartbeat_timeout for h in group.fleet.hooks() if h.name == hook]
            except FleetError as error:
                timeouts = []
                log.error("lifecycle hook %r: cannot read its heartbeat timeout: %s", hook, error)
            if not timeouts:
                log.error(
                    "lifecycle hook %r: not a hook of %s (expected an %s hook); no heartbeats",
                    *(hook, group.name, TERMINATING_HOOK),
                )
                self._beat_every = float("inf")
                return
            self._beat_every = timeouts[0] / BEATS_PER_TIMEOUT
            self._next_beat = now + self._beat_every
            log.info(
                "lifecycle hook %r: heartbeat timeout %g s; a heartbeat every %g s while draining",
                *(hook, timeouts[0], self._beat_every),
            )
        if now < self._next_beat:
            return
        self._next_beat = now + self._beat_every
        try:
            group.fleet.lifecycle_heartbeat(group.instance, hook)
            log.info("lifecycle hook %r: heartbeat recorded (still draining)", hook)
        except FleetError as error:
            log.error("lifecycle hook %r: heartbeat failed: %s", hook, error)

    def _lookup(self, hook: str) -> _Group | None:
        """This instance's id and group from the metadata service, once (None if unknown)."""
        if self._looked_up:
            return self._group
        client = MetadataClient(self.settings.metadata_url)
        try:
            instance = client.get("instance-id") or ""
            region = client.get("placement/region") or ""
            name = self.settings.autoscaling_group or (client.get(GROUP_TAG) or "")
        except MetadataError as error:  # asked again next time
            log.error("lifecycle hook %r: the instance metadata did not answer: %s", hook, error)
            return None
        finally:
            client.close()
        self._looked_up = True
        if not (instance and name):
            log.error(
                "lifecycle hook %r: cannot complete it: the instance metadata gave no %s "
                "(set [node] autoscaling_group, or turn on instance metadata tags)",
                hook,
                "instance id" if not instance else "Auto Scaling group",
            )
            return None
        try:
            fleet = open_fleet(f"asg://{name}", region=region)
        except FleetError as error:
            log.error("lifecycle hook %r: %s", hook, error)
            return None
        self._group = _Group(instance, name, fleet)
        return self._group
