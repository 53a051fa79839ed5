"""``batchfarm manager``: run the grid's manager on this machine."""

from __future__ import annotations

import shutil
import signal
import sys
import tempfile
from pathlib import Path

import click

from batchfarm.actors.cli.context import CliState, log_to_stderr
from batchfarm.actors.manager.actor import ManagerActor
from batchfarm.actors.runtime import run_actor
from batchfarm.actors.runtime.process import mailbox_address


@click.command("manager")
@click.pass_obj
def manager(state: CliState) -> None:
    """Run the manager: record completions and node telemetry, advance jobs' stages.

    SIGTERM or Ctrl-C stops it; what it has not recorded waits in the queues for its restart.
    """
    settings = state.loaded.settings
    log_to_stderr()
    run_dir = Path(tempfile.mkdtemp(prefix="batchfarm-manager-"))
    try:
        code = run_actor(
            ManagerActor(settings),
            mailbox_address(run_dir, "manager"),
            signals=(signal.SIGTERM, signal.SIGINT),
        )
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
    sys.exit(int(code))
