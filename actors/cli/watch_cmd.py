"""``batchfarm watch JOB``: a job's stages and running tasks, live, until it ends."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import click
from rich.console import Group, RenderableType
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from batchfarm.actors.cli import jobview, show
from batchfarm.actors.cli.client import ApiClient
from batchfarm.actors.cli.context import CliState

#: Seconds between looks at the job (the view refreshes about twice a second).
REFRESH_S = 0.5
#: Without a terminal, a line is printed when the job changes, and at least this often.
LINE_EVERY_S = 10.0
#: Running tasks listed by name; the rest are counted.
RUNNING_SHOWN = 20


def poll_until_finished(
    api: ApiClient,
    job_id: str,
    on_update: Callable[[dict[str, Any]], None] | None = None,
    every_s: float = REFRESH_S,
) -> dict[str, Any]:
    """Read the job every ``every_s`` seconds until it has finished; return it then."""
    while True:
        job = api.job(job_id)
        if on_update is not None:
            on_update(job)
        if job["state"] in jobview.FINISHED:
            return job
        time.sleep(every_s)


@click.command("watch")
@click.argument("job")
@click.pass_obj
def watch(state: CliState, job: str) -> None:
    r"""Follow JOB live until it ends: a progress bar per stage and the running tasks.

    On a terminal the view refreshes about twice a second; otherwise a line is printed
    whenever the job moves (and every 10 seconds). Ctrl-C stops watching, not the job.

    \b
    Exit codes: 0 the job succeeded, 1 it failed (or the command failed), 3 it was cancelled.
    """
    console = show.stdout_console()
    with ApiClient.from_loaded(state.loaded) as api:
        if console.is_terminal:
            with Live(console=console, auto_refresh=False) as live:
                running = RunningTasks()

                def draw(found: dict[str, Any]) -> None:
                    now = time.time()
                    live.update(frame(found, running(api, found, now), now), refresh=True)

                final = poll_until_finished(api, job, draw)
        else:
            final = poll_until_finished(api, job, _Lines())
    failures = final.get("failures") or []
    if failures:
        console.print(jobview.failures_view(failures))
    sys.exit(jobview.exit_code(final["state"]))


class _Lines:
    """Prints the job's one-line summary when it changes, and every LINE_EVERY_S anyway."""

    def __init__(self) -> None:
        self._last = ""
        self._at = 0.0

    def __call__(self, job: dict[str, Any]) -> None:
        line = jobview.job_line({**job, "eta_s": None})  # the ETA alone moves every time
        now = time.monotonic()
        if line != self._last or now - self._at >= LINE_EVERY_S:
            click.echo(jobview.job_line(job))
            sys.stdout.flush()
            self._last, self._at = line, now


@dataclass
class Running:
    """A task running now: where, and since when."""

    task: str  # <stage>/<part>
    node: str | None
    worker: int | None
    started_at: float | None
    #: Fraction done, as its worker's heartbeat last said (a handler reports it).
    progress: float | None = None


class RunningTasks:
    """A job's running tasks, from the store's task states and the nodes' heartbeats.

    Heartbeats name each worker's task as soon as it starts, before the store hears of it;
    a task known only from them is timed from when this watch first saw it running.
    """

    def __init__(self) -> None:
        self._first_seen: dict[str, float] = {}

    def __call__(self, api: ApiClient, job: Mapping[str, Any], now: float) -> list[Running]:
        """Up to RUNNING_SHOWN running tasks of ``job``, longest running first."""
        if job["state"] in jobview.FINISHED:
            return []
        found: dict[str, Running] = {}
        if (job.get("tasks") or {}).get("running"):
            for task in api.running_tasks(job["id"], RUNNING_SHOWN):
                name = f"{task['stage']}/{task['part']}"
                found[name] = Running(
                    name, task.get("node_id"), task.get("worker"), task.get("started_at")
                )
        prefix = f"{job['id']}/"
        for node in api.nodes():
            for worker in node.get("workers") or []:
                task_id = str(worker.get("task") or "")
                name = task_id[len(prefix) :]
                if not task_id.startswith(prefix):
                    continue
                if name not in found:
                    found[name] = Running(name, node["id"], worker.get("index"), None)
                found[name].progress = worker.get("progress")
        self._first_seen = {name: self._first_seen.get(name, now) for name in found}
        for name, entry in found.items():
            if entry.started_at is None:
                entry.started_at = self._first_seen[name]
        ordered = sorted(found.values(), key=lambda r: (r.started_at or now, r.task))
        return ordered[:RUNNING_SHOWN]


def frame(job: Mapping[str, Any], running: list[Running], now: float) -> RenderableType:
    """One picture of the job: its state, a bar per stage, its running tasks."""
    head = Text(f"{job['id']}  ", style="bold")
    head.append_text(jobview.state_text(job["state"]))
    head.append(f"  {jobview.done_text(job)}")
    if job.get("eta_s") is not None:
        head.append(f"  ETA {show.duration(job['eta_s'])}")
    if job.get("why"):
        head.append(f"  ({job['why']})", style="dim")
    bars = Table.grid(padding=(0, 2))
    for _ in range(5):
        bars.add_column()
    for stage in job.get("stages", []):
        total = max(int(stage.get("total") or 0), 1)
        bars.add_row(
            stage["name"],
            # By progress, not done: failed and cancelled tasks are finished too.
            ProgressBar(total=total, completed=total * float(stage.get("progress") or 0), width=40),
            jobview.done_text(stage),
            jobview.state_text(stage["state"]),
            f"{show.rate(stage.get('throughput'))}  ETA {show.duration(stage.get('eta_s'))}",
        )
    parts: list[RenderableType] = [head, bars]
    if running:
        table = Table(title="Running tasks", title_justify="left", header_style="bold")
        for column in ("task", "node", "worker", "elapsed", "done"):
            table.add_column(column)
        for task in running:
            started = task.started_at
            table.add_row(
                task.task,
                task.node or show.NONE,
                show.NONE if task.worker is None else str(task.worker),
                show.NONE if started is None else show.duration(max(0.0, now - started)),
                show.percent(task.progress),
            )
        parts.append(table)
        more = int((job.get("tasks") or {}).get("running", 0)) - len(running)
        if more > 0:
            parts.append(Text(f"and {more} more running", style="dim"))
    return Group(*parts)
