"""``batchfarm status [JOB]``: the grid's jobs, or one job in detail."""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from batchfarm.actors.cli import jobview
from batchfarm.actors.cli.client import ApiClient
from batchfarm.actors.cli.context import CliState
from batchfarm.actors.cli.show import stdout_console

JOB_STATES = ("pending", "scheduled", "running", "paused", "succeeded", "failed", "cancelled")


@click.command("status")
@click.argument("job", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print the API's JSON instead of tables.")
@click.option(
    "--state",
    "states",
    multiple=True,
    type=click.Choice(JOB_STATES),
    help="Without JOB: only jobs in this state (repeatable).",
)
@click.option(
    "--limit",
    type=click.IntRange(1, 1000),
    default=100,
    show_default=True,
    help="Without JOB: at most this many jobs, newest first.",
)
@click.pass_obj
def status(
    state: CliState, job: str | None, as_json: bool, states: tuple[str, ...], limit: int
) -> None:
    r"""Show the grid's jobs, or JOB with its stages, failures and performance data.

    Without JOB: a table of jobs (id, name, state, progress, why, and whether each deadline
    will be met when a job has one), exit 0. With JOB: its state, its deadline's verdict and
    its cost, a table per stage (task counts, progress, wall and CPU time, throughput, ETA,
    failures, cost), the first failed tasks with their errors, and where the time of an
    average task went in each stage (queue wait, fetch, compute, upload).

    \b
    Exit codes with JOB: 0 it succeeded or is still pending, scheduled or running,
    1 it failed (or the command failed), 3 it was cancelled.
    """
    with ApiClient.from_loaded(state.loaded) as api:
        if job is None:
            jobs = api.jobs(states, limit)
            if as_json:
                _print_json({"jobs": jobs})
            elif not jobs:
                click.echo("no jobs")
            else:
                stdout_console().print(jobview.jobs_table(jobs))
            return
        found = api.job(job)
        if as_json:
            _print_json(found)
        else:
            tasks = api.tasks(job)
            stdout_console().print(jobview.job_view(found, tasks))
    sys.exit(jobview.exit_code(found["state"]))


def _print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, ensure_ascii=False))
