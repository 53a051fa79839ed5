"""``batchfarm cancel JOB`` and ``batchfarm retry JOB``."""

from __future__ import annotations

import click

from batchfarm.actors.cli.client import ApiClient
from batchfarm.actors.cli.context import CliState


@click.command("cancel")
@click.argument("job")
@click.pass_obj
def cancel(state: CliState, job: str) -> None:
    """Cancel JOB: its queued tasks never run, its running ones stop within seconds.

    A job that has already finished is left as it is (exit 0, saying so).
    """
    with ApiClient.from_loaded(state.loaded) as api:
        reply = api.cancel(job)
    if reply.get("cancelled"):
        click.echo(f"{job}: cancelled")
    else:
        click.echo(f"{job}: already {reply.get('state', 'finished')}, nothing to cancel")


@click.command("retry")
@click.argument("job")
@click.pass_obj
def retry(state: CliState, job: str) -> None:
    """Run JOB's failed tasks again; prints how many tasks were resubmitted."""
    with ApiClient.from_loaded(state.loaded) as api:
        reply = api.retry(job)
    count = int(reply.get("retried", 0))
    plural = "" if count == 1 else "s"
    click.echo(f"{job}: {count} task{plural} resubmitted; the job is {reply.get('state')}")
