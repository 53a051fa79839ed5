"""Retrying a job: its failed tasks run again; everything that succeeded stays as it is.

:func:`retry_job` sends a fresh body for each failed task of the job (to the job's priority
queue), then records the tasks queued again with their attempts and failed nodes forgotten
(a retried task gets its full ``max_attempts``, and a poison verdict does not carry over),
their stages and the job running again. Succeeded tasks and their outputs are not touched.
From there the results processor carries the job on as in a first run: a retried part that
succeeds chains into the next stage, a fan-in stage starts once every part before it has
succeeded, and the job succeeds once its last stage has.

Order: the bodies are sent before the store changes, and under the results processor's lock
(:data:`~batchfarm.actors.manager.results.ADVANCING`), so no run of a retried task is
recorded against the old state. A manager killed between the two leaves the job failed;
retrying it again sends the bodies again, which is harmless (outputs have fixed keys, and
the store counts a re-run once). The failed runs' messages stay in the dead-letter queue.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from typing import Any

from batchfarm.actors.backends.queue import MAX_BATCH, Outgoing
from batchfarm.actors.backends.queue.priority import TaskQueues
from batchfarm.actors.backends.store import (
    JobState,
    StageState,
    StageView,
    Store,
    TaskState,
    TaskUpdate,
    TaskView,
)
from batchfarm.actors.codec import encode_body
from batchfarm.actors.manager.cancel import UnknownJobError
from batchfarm.actors.manager.plan import SpecPlanner, first_tasks
from batchfarm.actors.manager.results import ADVANCING
from batchfarm.actors.manager.spec import JobSpec
from batchfarm.actors.messages import TaskBody
from batchfarm.actors.settings import TasksSettings

log = logging.getLogger(__name__)

#: Task states a retry sends again.
RETRIED_STATES = (TaskState.FAILED,)


def retry_job(store: Store, tasks: TaskQueues, job_id: str, defaults: TasksSettings) -> int:
    """Send the failed tasks of ``job_id`` again; return how many (0: nothing had failed).

    ``tasks`` are the grid's task queues; ``defaults`` the ``[tasks]`` settings the job's
    bodies were planned with. A cancelled job is not retried (0). Raises
    :class:`UnknownJobError` for a job the store does not know.
    """
    job = store.job(job_id)
    if job is None:
        raise UnknownJobError(f"no job {job_id!r}")
    if job.state == JobState.CANCELLED:
        return 0  # its workers drop its tasks for good: there is nothing to run them
    with ADVANCING:
        failed = store.tasks(job_id, states=RETRIED_STATES, limit=None)
        if not failed:
            return 0
        stages = {stage.name: stage for stage in store.stages(job_id)}
        now = time.time()
        planned = _bodies(job.spec, stages, failed, defaults)
        bodies = [replace(body, enqueued_at=now) for body in planned]
        for name in sorted({body.stage for body in bodies}):  # each to its stage's class
            queue = tasks.for_priority(job.priority, stages[name].node_class)
            of_stage = [body for body in bodies if body.stage == name]
            for start in range(0, len(of_stage), MAX_BATCH):
                chunk = of_stage[start : start + MAX_BATCH]
                queue.send_batch([Outgoing(encode_body(body)) for body in chunk])
        store.update_tasks(
            TaskUpdate(
                job_id,
                task.stage,
                task.part,
                TaskState.QUEUED,
                attempts=0,
                queued_at=now,
                failed_nodes=[],
            )
            for task in failed
        )
        for name in sorted({task.stage for task in failed}, key=lambda n: stages[n].index):
            if stages[name].state != StageState.RUNNING:
                store.set_stage_state(job_id, name, StageState.RUNNING, None, reopen=True)
        store.set_job_state(job_id, JobState.RUNNING, None, reopen=True)
    log.info("job %s: %d failed tasks sent again", job_id, len(bodies))
    return len(bodies)


def _bodies(
    stored_spec: dict[str, Any],
    stages: dict[str, StageView],
    failed: list[TaskView],
    defaults: TasksSettings,
) -> list[TaskBody]:
    """The bodies of the failed tasks, planned again from the job's stored spec."""
    spec = JobSpec.from_stored(stored_spec)
    planner = SpecPlanner(lambda _job: stored_spec, defaults)
    first: dict[int, TaskBody] = {}
    bodies = []
    for task in failed:
        stage = stages[task.stage]
        if stage.index == 0:
            if not first:
                # Planned whole, as at submit time: a part's range param depends on its index.
                planned = first_tasks(spec, task.job_id, list(spec.keys), defaults)
                first = {body.part: body for body in planned}
            bodies.append(first[task.part])
        else:
            bodies.append(planner.next_task(stage, task.part, list(task.inputs or [])))
    return bodies
