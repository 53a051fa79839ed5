"""``batchfarm submit``: check a job locally, upload its inputs, hand it to the manager.

The order keeps a bad job from leaving anything behind: the spec is read and checked (and
its task bodies planned) here, so a mistake is reported naming the file and field before a
byte moves; then the manager must answer; then the inputs go straight to the blob store
under ``jobs/<id>/input/`` (the id is made here for that); then ``POST /api/v1/jobs``. If
the manager refuses the job, the inputs just uploaded are deleted again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import sys
import time
from pathlib import Path
from typing import Any

import click

from batchfarm.actors.backends import open_blobs
from batchfarm.actors.cli.client import ApiClient, ApiError
from batchfarm.actors.cli.context import CliState
from batchfarm.actors.cli.jobview import exit_code, job_line
from batchfarm.actors.cli.show import byte_progress, size
from batchfarm.actors.cli.watch_cmd import poll_until_finished
from batchfarm.actors.errors import BatchfarmError
from batchfarm.actors.manager.node_classes import check_node_classes
from batchfarm.actors.manager.plan import make_plan, new_job_id
from batchfarm.actors.manager.spec import (
    PRIORITIES,
    JobSpec,
    check_deadline,
    load_spec,
    spec_from_flags,
)
from batchfarm.actors.manager.upload import input_key, input_keys, upload_inputs
from batchfarm.actors.settings import Settings

#: HTTP statuses meaning "this job is refused as sent": its fresh inputs are deleted again.
_REFUSED = (400, 413, 422)


@click.command("submit")
@click.argument("args", nargs=-1, metavar="SPEC | INPUTS...")
@click.option("--handler", help="Submit a one-stage job running this handler over INPUTS.")
@click.option("--param", "params", multiple=True, metavar="KEY=VALUE", help="A handler param.")
@click.option(
    "--key", "keys", multiple=True, help="An input already in the blob store (key or s3:// URL)."
)
@click.option("--name", help="The job's name (it also starts the job id).")
@click.option("--priority", type=click.Choice(list(PRIORITIES)), help="Default: normal.")
@click.option("--at", metavar="ISO", help="Start at this time (ISO 8601 with its zone).")
@click.option("--after", metavar="DELAY", help="Start after this delay: 90s, 10m, 2h, 1d12h.")
@click.option(
    "--deadline",
    metavar="ISO",
    help="Finish by this time (ISO 8601 with its zone); also overrides a spec file's deadline.",
)
@click.option("--parts", type=int, help="N tasks, each given every input, instead of one each.")
@click.option("--max-attempts", type=int, help="Runs a task gets before it fails for good.")
@click.option("--time-limit", type=float, help="Seconds a task may run.")
@click.option("--node-class", help="Which class of node runs the job.")
@click.option("--wait", is_flag=True, help="Wait for the job to end; exit as `status` does.")
@click.pass_obj
def submit(
    state: CliState,
    args: tuple[str, ...],
    *,
    handler: str | None,
    params: tuple[str, ...],
    keys: tuple[str, ...],
    name: str | None,
    priority: str | None,
    at: str | None,
    after: str | None,
    deadline: str | None,
    parts: int | None,
    max_attempts: int | None,
    time_limit: float | None,
    node_class: str | None,
    wait: bool,
) -> None:
    r"""Submit the job SPEC (a .toml or .json file) or, with --handler, a one-stage job.

    \b
      batchfarm submit job.toml
      batchfarm submit --handler transcode --param height=720 clips/*.mov
      batchfarm submit --handler checksum --name sums --after 10m data/

    The spec is checked before anything is uploaded (a bad one exits 1 naming the file or
    flag and the field); local input files go straight to the blob store, with a progress
    bar on a terminal; then the manager queues the job. Prints the job id alone.

    \b
    With --wait, exit codes: 0 succeeded, 1 failed (or the command failed), 3 cancelled.
    """
    flags = {
        "--param": params,
        "--key": keys,
        "--name": name,
        "--priority": priority,
        "--at": at,
        "--after": after,
        "--parts": parts,
        "--max-attempts": max_attempts,
        "--time-limit": time_limit,
        "--node-class": node_class,
    }
    if handler is None:
        given = [flag for flag, value in flags.items() if value not in (None, ())]
        if given:
            raise click.UsageError(f"{given[0]} goes with --handler; a spec file sets it itself")
        if len(args) != 1:
            raise click.UsageError("expected one spec file, or --handler H and its INPUTS")
        spec = load_spec(Path(args[0]), storage_url=state.loaded.settings.storage.url)
        if deadline is not None:
            by = check_deadline(
                "command line", "--deadline", deadline, spec.start_time(time.time())
            )
            spec = dataclasses.replace(spec, deadline=by)
    else:
        spec = spec_from_flags(
            handler,
            args,
            params=params,
            keys=keys,
            name=name,
            priority=priority,
            at=at,
            after=after,
            deadline=deadline,
            parts=parts,
            max_attempts=max_attempts,
            time_limit=time_limit,
            node_class=node_class,
            storage_url=state.loaded.settings.storage.url,
        )
    settings = state.loaded.settings
    now = time.time()
    job_id = new_job_id(spec.name, now)
    # Planned here as the manager will plan it: a body too large fails before any upload.
    make_plan(spec, job_id, input_keys(spec, job_id), settings.tasks, now=now)
    with ApiClient.from_loaded(state.loaded) as api:
        api.health()  # no manager, no upload
        # The manager's node classes: a stage naming another is refused before any upload.
        classes = [c["node_class"] for c in api.get("/scaling", {"limit": 1}).get("classes", [])]
        if classes:  # (a manager from before node classes lists none, and has only "default")
            check_node_classes(spec.stages, classes, spec.source)
        keys_in_order = _upload(spec, settings, job_id)
        stored = spec.to_stored(keys_in_order, spec.start_time(now))
        body: dict[str, Any] = {"id": job_id, "spec": stored}
        try:
            api.post("/jobs", body)
        except ApiError as e:
            if e.status in _REFUSED:
                _delete_inputs(spec, settings, job_id)
            raise
        click.echo(job_id)
        if not wait:
            return
        sys.stdout.flush()
        job = poll_until_finished(api, job_id)
    click.echo(job_line(job), err=True)
    for failure in job.get("failures") or []:
        error = failure.get("error") or {}
        text = f"{error.get('type', 'error')}: {error.get('message', '')}"
        click.echo(f"  {failure.get('task')}: {text}", err=True)
    sys.exit(exit_code(job["state"]))


def _upload(spec: JobSpec, settings: Settings, job_id: str) -> list[str]:
    """Stream the spec's files to the blob store; every input key, in part order."""
    blobs = open_blobs(settings.storage)
    try:
        total = sum(f.size for f in spec.files)
        label = f"uploading {len(spec.files)} files ({size(total)})"
        with byte_progress(label, total) as advance:
            sent = 0

            def progress(done: int, _total: int) -> None:
                nonlocal sent
                advance(done - sent)
                sent = done

            return upload_inputs(spec, blobs, job_id, progress if spec.files else None)
    finally:
        blobs.close()


def _delete_inputs(spec: JobSpec, settings: Settings, job_id: str) -> None:
    """Best effort: the inputs of a job the manager refused serve nothing."""
    with contextlib.suppress(BatchfarmError, OSError):
        blobs = open_blobs(settings.storage)
        try:
            for item in spec.files:
                blobs.delete(input_key(job_id, item.name))
        finally:
            blobs.close()
