"""``batchfarm node``: run this machine's supervisor and its worker actors."""

from __future__ import annotations

import logging
import shutil
import signal
import socket
import sys
import tempfile
from pathlib import Path

import click

from batchfarm.actors.cli.context import CliState, log_to_stderr
from batchfarm.actors.runtime import run_actor
from batchfarm.actors.runtime.process import mailbox_address
from batchfarm.actors.settings import Settings, load
from batchfarm.supervisor.imds import MetadataClient, MetadataError
from batchfarm.supervisor.node import Node

log = logging.getLogger(__name__)


def _default_name(settings: Settings) -> str:
    """The instance id on EC2 (the autoscaler finds a node's instance by it), else the host."""
    if settings.node.metadata_url:
        client = MetadataClient(settings.node.metadata_url)
        try:
            instance_id = client.get("instance-id")
        except MetadataError as error:
            raise click.ClickException(
                f"[node] metadata_url = {settings.node.metadata_url!r}: cannot read the"
                f" instance id to name this node ({error}); pass --name"
            ) from None
        finally:
            client.close()
        if instance_id:
            return instance_id.strip()
        log.warning("node: the metadata service has no instance id; naming the node by host")
    return socket.gethostname()


@click.command("node")
@click.option(
    "--name",
    help="This node's name in the grid (default: the EC2 instance id when [node]"
    " metadata_url is set, else the host name).",
)
@click.option(
    "--until-empty",
    is_flag=True,
    help="Drain and exit 0 once the task queue stays empty (one-off batches, tests).",
)
@click.pass_obj
def node(state: CliState, name: str | None, until_empty: bool) -> None:
    """Run a worker node: one pinned worker per core pulling tasks until told to stop.

    SIGTERM or Ctrl-C drains (running tasks finish within [node] drain_grace, the rest go
    back to the queue); a second one stops at once. SIGHUP reloads the config file.
    """
    settings = state.loaded.settings
    log_to_stderr()

    def reload() -> Settings:
        return load(state.config_path).settings

    # Mailboxes are ipc:// sockets, whose paths must be short: a private folder in /tmp.
    run_dir = Path(tempfile.mkdtemp(prefix="batchfarm-node-"))
    try:
        supervisor = Node(
            settings,
            name or _default_name(settings),
            run_dir,
            reload=reload,
            until_empty=until_empty,
        )
        code = run_actor(
            supervisor,
            mailbox_address(run_dir, "node"),
            signals=(signal.SIGTERM, signal.SIGINT, signal.SIGHUP),
        )
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
    sys.exit(int(code))
