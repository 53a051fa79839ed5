"""What the manager said durably about tasks: the control markers in the blob store.

The manager steers the data plane through objects under ``jobs/<job>/control/``, so a node
that missed its messages still obeys: a cancelled job's marker makes workers drop its tasks,
and a poison task's marker makes them drop its reruns. :class:`ControlChecks` reads them
for one worker, caching each job's cancellation for :data:`CANCEL_CHECK_TTL_S` seconds.
"""

from __future__ import annotations

import logging
import time

from batchfarm.actors.backends.blobs import BlobStore
from batchfarm.actors.errors import BatchfarmError
from batchfarm.actors.messages import TaskBody, cancel_marker
from batchfarm.actors.worker.assignment import poisoned

log = logging.getLogger(__name__)

#: Seconds a job's cancellation check is trusted before the blob store is asked again.
CANCEL_CHECK_TTL_S = 2.0
#: Jobs whose cancellation is remembered at once (the cache is emptied beyond that).
MAX_CACHED_JOBS = 1000


class ControlChecks:
    """One worker's reads of cancel and poison markers; a store error counts as "no"."""

    def __init__(self, blobs: BlobStore, name: str = "worker") -> None:
        self._blobs = blobs
        self._name = name
        self._cancelled: dict[str, tuple[float, bool]] = {}  # job -> (checked at, cancelled)

    def job_cancelled(self, job: str, now: float | None = None) -> bool:
        """Whether ``job`` is cancelled: its marker is in the blob store.

        Checked at most every :data:`CANCEL_CHECK_TTL_S` seconds per job; a store error counts
        as not cancelled (the next check asks again).
        """
        now = time.monotonic() if now is None else now
        checked = self._cancelled.get(job)
        if checked is not None and now - checked[0] < CANCEL_CHECK_TTL_S:
            return checked[1]
        try:
            cancelled = self._blobs.exists(cancel_marker(job))
        except BatchfarmError as error:
            log.warning("%s cannot check job %s: %s", self._name, job, error)
            cancelled = False
        if len(self._cancelled) > MAX_CACHED_JOBS:
            self._cancelled.clear()
        self._cancelled[job] = (now, cancelled)
        return cancelled

    def poison(self, task: TaskBody) -> str | None:
        """Why the manager gave up on ``task`` (a rerun of its message), or None.

        Asked of reruns only: a first run cannot have been judged yet.
        """
        try:
            reason = poisoned(task, self._blobs)
        except BatchfarmError as error:
            log.warning("%s cannot check %s: %s", self._name, task.task_id, error)
            return None
        if reason is not None:
            log.info("%s: %s dropped: %s", self._name, task.task_id, reason)
        return reason
