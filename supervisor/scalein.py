"""The node's side of leaving an EC2 fleet: notices in, a drain, the lifecycle action out.

:class:`ScaleIn` watches the instance metadata service (:mod:`batchfarm.supervisor.imds`)
and turns each notice into the grace a drain gets: a spot interruption's time less a margin
to hand messages back, else ``[node] drain_grace``. When Auto Scaling chose the instance for
scale-in and the group holds it with a termination lifecycle hook (``[node] lifecycle_hook``),
the node completes the lifecycle action once drained, so the instance goes at once instead of
waiting out the hook's timeout, and never while a task runs on it.
"""

from __future__ import annotations

import logging
import time

import httpx

from batchfarm.actors.backends.fleet import CONTINUE, FleetError, open_fleet
from batchfarm.actors.settings.model import NodeSettings
from batchfarm.supervisor.imds import MetadataClient, MetadataError, Notice, NoticeWatcher

log = logging.getLogger(__name__)

#: Seconds kept before a spot interruption's time to stop tasks and hand their messages back.
HANDBACK_S = 15.0
#: The instance tag Auto Scaling puts on its members (readable when metadata tags are on).
GROUP_TAG = "tags/instance/aws:autoscaling:groupName"


class ScaleIn:
    """Notices from the metadata service, and the lifecycle action once the node drained."""

    def __init__(self, settings: NodeSettings) -> None:
        self.settings = settings
        self.watcher = NoticeWatcher(settings.metadata_url, settings.metadata_poll)
        self.terminating = False

    def start(self) -> None:
        """Start watching."""
        self.watcher.start()

    def stop(self) -> None:
        """Stop watching."""
        self.watcher.stop()

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

    def drained(self) -> None:
        """The node drained: let Auto Scaling terminate the instance now, if it waits on us.

        A failure is logged, not raised: the hook's timeout applies its default result anyway.
        """
        hook = self.settings.lifecycle_hook
        if not (self.terminating and hook):
            return
        client = MetadataClient(self.settings.metadata_url)
        try:
            instance = client.get("instance-id") or ""
            region = client.get("placement/region") or ""
            group = self.settings.autoscaling_group or (client.get(GROUP_TAG) or "")
            if not (instance and group):
                log.error(
                    "lifecycle hook %r: cannot complete it: the instance metadata gave no %s "
                    "(set [node] autoscaling_group, or turn on instance metadata tags)",
                    hook,
                    "instance id" if not instance else "Auto Scaling group",
                )
                return
            with open_fleet(f"asg://{group}", region=region) as fleet:
                fleet.complete_lifecycle(instance, hook, CONTINUE)
            log.info("lifecycle hook %r: completed (CONTINUE) for %s in %s", hook, instance, group)
        except (httpx.HTTPError, MetadataError, FleetError) as error:
            log.error("lifecycle hook %r: could not complete it: %s", hook, error)
        finally:
            client.close()
