"""``batchfarm scaling``: each node class's fleet and the autoscaler's recent decisions."""

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


@click.command("scaling")
@click.option(
    "--limit",
    type=click.IntRange(1, 1000),
    default=20,
    show_default=True,
    help="Most events to show, newest first.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the API's JSON instead of a table.")
@click.pass_obj
def scaling(state: CliState, limit: int, as_json: bool) -> None:
    """Show each node class's fleet (desired, reporting, limits) and the autoscaler's decisions.

    Each decision says which way the fleet went (out, in, hold), the backlog and nodes it
    saw, and why.
    """
    with ApiClient.from_loaded(state.loaded) as api:
        found = api.get("/scaling", {"limit": limit})
    if as_json:
        click.echo(json.dumps(found, indent=2, ensure_ascii=False))
        return
    # One block per node class (a manager before node classes sent the default one only).
    now = time.time()
    for at, view in enumerate(found.get("classes") or [found]):
        if at:
            click.echo("")
        click.echo(fleet_line(view))
        events = view.get("events") or []
        if events:
            show.stdout_console().print(events_table(events, now))
        else:
            click.echo("no scaling decisions recorded yet")


def fleet_line(found: Mapping[str, Any]) -> str:
    """One line: a class's provider, its fleet's desired and reporting nodes, and its limits."""
    node_class = found.get("node_class", "default")
    provider = found.get("provider") or ""
    if not provider:
        if node_class == "default":
            return "autoscaler: off ([autoscale] provider is empty)"
        return f"autoscaler: off for class {node_class} ([classes.{node_class}] provider is empty)"
    desired = found.get("desired")
    return (
        f"autoscaler: {provider}, class {node_class}: desired"
        f" {'-' if desired is None else desired}, {found.get('nodes', 0)} node(s) reporting,"
        f" min {found.get('min_nodes')}, max {found.get('max_nodes')}"
    )


def events_table(events: Sequence[Mapping[str, Any]], now: float) -> Table:
    """One row per decision, newest first."""
    table = Table(box=None, header_style="bold", pad_edge=False)
    table.add_column("when", justify="right")
    table.add_column("direction")
    table.add_column("desired", justify="right")
    table.add_column("backlog", justify="right")
    table.add_column("nodes", justify="right")
    table.add_column("reason")
    for event in events:
        table.add_row(
            f"{show.age(event.get('time'), now)} ago",
            str(event.get("direction", "?")),
            f"{event.get('desired_before')} -> {event.get('desired_after')}",
            str(event.get("backlog", 0)),
            str(event.get("nodes", 0)),
            str(event.get("reason", "")),
        )
    return table
