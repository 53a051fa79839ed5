"""A job as ``status`` and ``watch`` show it: tables built from the API's JSON.

Pure: these functions take what the API returned (see the API contract's Job, Stage and
Task shapes) and build rich renderables; they never call the API themselves.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from statistics import fmean
from typing import Any

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from batchfarm.actors.cli import show

#: Exit codes of ``status JOB``, ``watch`` and ``submit --wait``, by the job's final state.
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_CANCELLED = 3
#: Job states after which nothing more happens.
FINISHED = ("succeeded", "failed", "cancelled")
#: Task states whose runs are over (their timings are final).
RAN = ("succeeded", "failed")
#: The order task counts are listed in.
TASK_STATES = ("succeeded", "running", "queued", "retrying", "pending", "failed", "cancelled")
_PRIORITIES = {0: "normal", 1: "high"}
_STYLES = {
    "succeeded": "green",
    "running": "cyan",
    "failed": "red",
    "cancelled": "yellow",
    "paused": "yellow",
    "scheduled": "blue",
}


def exit_code(state: str) -> int:
    """0 for a job that succeeded or has not finished, 1 failed, 3 cancelled."""
    return {"failed": EXIT_FAILED, "cancelled": EXIT_CANCELLED}.get(state, EXIT_OK)


def state_text(state: str) -> Text:
    """A state, coloured."""
    return Text(state, style=_STYLES.get(state, ""))


def done_text(item: Mapping[str, Any]) -> str:
    """``45% (9/20)`` for a job or stage."""
    total = _total(item)
    return f"{show.percent(item.get('progress'))} ({item.get('done', 0)}/{total})"


def _total(item: Mapping[str, Any]) -> int:
    if isinstance(item.get("total"), int):
        return int(item["total"])
    tasks = item.get("tasks") or {}
    return int(tasks.get("total", sum(v for k, v in tasks.items() if k != "total")))


def counts_text(tasks: Mapping[str, int]) -> str:
    """``8 succeeded, 2 running, 6 queued``: the non-zero counts, in life order."""
    known = [s for s in TASK_STATES if tasks.get(s)]
    other = sorted(s for s in tasks if s not in TASK_STATES and s != "total" and tasks[s])
    return ", ".join(f"{tasks[s]} {s}" for s in (*known, *other)) or "no tasks yet"


def jobs_table(jobs: Sequence[Mapping[str, Any]]) -> Table:
    """``status`` without a job: id, name, state, progress and why, newest first.

    When a job has a deadline, a ``deadline`` column says whether each will be met.
    """
    table = Table(box=None, header_style="bold", pad_edge=False)
    deadlines = any(job.get("deadline_status") for job in jobs)
    columns = ("id", "name", "state", "progress", *(("deadline",) if deadlines else ()), "why")
    for column in columns:
        table.add_column(column, overflow="fold")
    for job in jobs:
        row: list[str | Text] = [job["id"], job.get("name") or "", state_text(job["state"])]
        row.append(done_text(job))
        if deadlines:
            row.append(deadline_text(job, short=True))
        row.append(job.get("why") or "")
        table.add_row(*row)
    return table


#: Deadline states, coloured.
_DEADLINE_STYLES = {
    "met": "green",
    "on_track": "green",
    "at_risk": "yellow",
    "missed": "red",
}


def deadline_text(job: Mapping[str, Any], *, short: bool = False) -> Text:
    """Whether the job's deadline will be met: "on track" (short) or the API's whole text."""
    status = job.get("deadline_status")
    if not isinstance(status, Mapping):
        return Text("")
    state = str(status.get("state", ""))
    # The long form goes on a row labelled "deadline" already.
    text = (
        state.replace("_", " ") if short else str(status.get("text", "")).removeprefix("deadline ")
    )
    return Text(text, style=_DEADLINE_STYLES.get(state, ""))


def job_summary(job: Mapping[str, Any]) -> Table:
    """The job's facts, one per line."""
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column()
    state = state_text(job["state"])
    if job.get("why"):
        state.append(f"  ({job['why']})", style="dim")
    priority = job.get("priority")
    rows: list[tuple[str, str | Text]] = [
        ("job", job["id"] + (f"  {job['name']!r}" if job.get("name") else "")),
        ("state", state),
        (
            "priority",
            _PRIORITIES.get(priority, str(priority))
            if isinstance(priority, int)
            else str(priority or "normal"),
        ),
        ("created", show.when(job.get("created_at"))),
    ]
    if job.get("start_at") and not job.get("started_at"):
        rows.append(("starts", show.when(job["start_at"])))
    if job.get("deadline_status"):
        rows.append(("deadline", deadline_text(job)))
    rows += [
        ("started", show.when(job.get("started_at"))),
        ("finished", show.when(job.get("finished_at"))),
        (
            "progress",
            f"{done_text(job)} tasks, {show.rate(job.get('throughput'))}, "
            f"ETA {show.duration(job.get('eta_s'))}",
        ),
        ("time", f"wall {show.duration(job.get('wall_s'))}, CPU {show.duration(job.get('cpu_s'))}"),
    ]
    if job.get("cost_dollars"):
        # Only where nodes are priced ([autoscale] price_per_hour, spot prices).
        rows.append(("cost", show.dollars(job["cost_dollars"])))
    for label, value in rows:
        table.add_row(label, value)
    return table


def stages_table(stages: Sequence[Mapping[str, Any]]) -> Table:
    """Per stage: counts, progress, wall and CPU time, throughput, ETA, failures, cost.

    The cost column is there when a stage cost something (its nodes are priced).
    """
    table = Table(title="Stages", title_justify="left", header_style="bold")
    costs = any(stage.get("cost_dollars") for stage in stages)
    for column in ("stage", "handler", "state", "tasks", "progress"):
        table.add_column(column, overflow="fold")
    for column in ("wall", "CPU", "throughput", "ETA", "failed", *(("cost",) if costs else ())):
        table.add_column(column, justify="right")
    for stage in stages:
        mode = stage.get("mode")
        handler = stage.get("handler", "") + (f" ({mode})" if mode and stage["index"] else "")
        table.add_row(
            stage["name"],
            handler,
            state_text(stage["state"]),
            counts_text(stage.get("tasks") or {}),
            done_text(stage),
            show.duration(stage.get("wall_s")),
            show.duration(stage.get("cpu_s")),
            show.rate(stage.get("throughput")),
            show.duration(stage.get("eta_s")),
            str(stage.get("failed", 0)),
            *((show.dollars(stage.get("cost_dollars")),) if costs else ()),
        )
    return table


def failures_view(failures: Sequence[Mapping[str, Any]]) -> RenderableType:
    """Each failed task with its error (type, message and the tool's last lines)."""
    lines = Text()
    lines.append(f"Failures ({len(failures)} shown)\n", style="bold red")
    for failure in failures:
        error = failure.get("error") or {}
        kind = error.get("type") or "error"
        lines.append(f"  {failure.get('task', '?')}  ", style="bold")
        lines.append(f"{kind}: {error.get('message', '')}".rstrip(": ") + "\n")
        tail = str(error.get("stderr_tail") or "").strip("\n")
        for line in tail.splitlines()[-10:]:
            lines.append(f"      {line}\n", style="dim")
    return lines


def performance_table(
    stages: Sequence[Mapping[str, Any]], tasks: Iterable[Mapping[str, Any]]
) -> Table:
    """The "Job performance data" table: per stage, where an average task run's time went."""
    ran: dict[str, list[Mapping[str, Any]]] = {stage["name"]: [] for stage in stages}
    for task in tasks:
        if task.get("state") in RAN and task.get("stage") in ran:
            ran[task["stage"]].append(task)
    table = Table(
        title="Job performance data (average per finished task)",
        title_justify="left",
        header_style="bold",
    )
    table.add_column("stage")
    for column in ("tasks", "queue wait", "fetch", "compute", "upload", "CPU", "in", "out"):
        table.add_column(column, justify="right")
    for name, runs in ran.items():
        if not runs:
            table.add_row(name, "0", *([show.NONE] * 7))
            continue

        def avg(key: str, runs: list[Mapping[str, Any]] = runs) -> float:
            return fmean(float(t.get(key) or 0) for t in runs)

        table.add_row(
            name,
            str(len(runs)),
            *(show.duration(avg(k)) for k in ("queue_wait_s", "fetch_s", "compute_s")),
            *(show.duration(avg(k)) for k in ("upload_s", "cpu_s")),
            show.size(avg("bytes_in")),
            show.size(avg("bytes_out")),
        )
    return table


def job_view(job: Mapping[str, Any], tasks: Iterable[Mapping[str, Any]]) -> Group:
    """``status JOB``: the facts, the stages, the failures and the performance data."""
    parts: list[RenderableType] = [job_summary(job), Text(), stages_table(job.get("stages", []))]
    failures = job.get("failures") or []
    if failures:
        parts += [Text(), failures_view(failures)]
    parts += [Text(), performance_table(job.get("stages", []), tasks)]
    return Group(*parts)


def job_line(job: Mapping[str, Any]) -> str:
    """One line for logs and pipes: the job's state and each stage's progress."""
    stages = ", ".join(f"{s['name']} {s.get('done', 0)}/{_total(s)}" for s in job.get("stages", []))
    why = f" ({job['why']})" if job.get("why") else ""
    eta = f", ETA {show.duration(job['eta_s'])}" if job.get("eta_s") is not None else ""
    return f"{job['id']}: {job['state']}{why} {show.percent(job.get('progress'))}{eta}: {stages}"
