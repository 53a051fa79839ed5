"""``batchfarm nodes`` and the verbs that steer one node: drain, pause, resume, cordon."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from typing import Any

import click
from rich.table import Table

from batchfarm.actors.cli import show
from batchfarm.actors.cli.client import ApiClient
from batchfarm.actors.cli.context import CliState
from batchfarm.actors.cli.jobview import state_text


@click.command("nodes")
@click.option("--json", "as_json", is_flag=True, help="Print the API's JSON instead of a table.")
@click.pass_obj
def nodes(state: CliState, as_json: bool) -> None:
    """List the grid's nodes: class, state, cordon, busy workers, CPU, memory, last heartbeat."""
    with ApiClient.from_loaded(state.loaded) as api:
        found = api.nodes()
    if as_json:
        click.echo(json.dumps({"nodes": found}, indent=2, ensure_ascii=False))
    elif not found:
        click.echo("no nodes have reported to the manager")
    else:
        show.stdout_console().print(nodes_table(found, time.time()))


def nodes_table(found: Sequence[Mapping[str, Any]], now: float) -> Table:
    """One row per node."""
    table = Table(box=None, header_style="bold", pad_edge=False)
    table.add_column("node")
    table.add_column("class")
    table.add_column("state")
    table.add_column("cordoned")
    for column in ("workers busy/total", "cpu%", "rss", "last heartbeat"):
        table.add_column(column, justify="right")
    for node in found:
        workers = node.get("workers")
        total = len(workers) if isinstance(workers, list) else int(workers or 0)
        cordon = "yes" if node.get("cordoned") else "no"
        if node.get("cordoned") and node.get("cordon_reason"):
            cordon += f" ({node['cordon_reason']})"
        table.add_row(
            node["id"],
            node.get("node_class") or "default",
            state_text(node.get("state", "?")),
            cordon,
            f"{node.get('busy', 0)}/{total}",
            f"{float(node.get('cpu_percent') or 0):.0f}",
            show.size(node.get("rss_bytes")),
            f"{show.age(node.get('last_heartbeat'), now)} ago",
        )
    return table


def _send(state: CliState, node: str, command: str, body: Any = None) -> None:
    """Send a drain, pause or resume command and say whether it went out."""
    with ApiClient.from_loaded(state.loaded) as api:
        reply = api.node_command(node, command, body)
    if reply.get("sent", True):
        click.echo(f"{node}: {command} sent")
    else:
        click.echo(f"{node}: {command} not sent (the node is not connected); try again")
        raise SystemExit(1)


@click.command("drain")
@click.argument("node")
@click.pass_obj
def drain(state: CliState, node: str) -> None:
    """Drain NODE: it takes no new task, finishes its running ones, then exits."""
    _send(state, node, "drain")


@click.command("pause")
@click.argument("node")
@click.option("--force", is_flag=True, help="Stop running tasks now and hand them back.")
@click.pass_obj
def pause(state: CliState, node: str, force: bool) -> None:
    """Pause NODE: it takes no new task; running ones finish (or, with --force, go back)."""
    _send(state, node, "pause", {"force": force})


@click.command("resume")
@click.argument("node")
@click.pass_obj
def resume(state: CliState, node: str) -> None:
    """Resume a paused NODE."""
    _send(state, node, "resume")


def _cordon(state: CliState, node: str, command: str, body: Any = None) -> None:
    with ApiClient.from_loaded(state.loaded) as api:
        reply = api.node_command(node, command, body)
    click.echo(f"{node}: {'cordoned' if reply.get('cordoned') else 'not cordoned'}")


@click.command("cordon")
@click.argument("node")
@click.option("--reason", help="Why, shown by `nodes`.")
@click.pass_obj
def cordon(state: CliState, node: str, reason: str | None) -> None:
    """Cordon NODE: mark it as taking no new work (it stays up; see `nodes`)."""
    _cordon(state, node, "cordon", None if reason is None else {"reason": reason})


@click.command("uncordon")
@click.argument("node")
@click.pass_obj
def uncordon(state: CliState, node: str) -> None:
    """Lift NODE's cordon."""
    _cordon(state, node, "uncordon")
